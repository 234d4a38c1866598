//! The Safe transaction as it arrives: Safe Transaction Service JSON, parsed field by field.
//!
//! Integers arrive as decimal strings (up to 2^256 − 1) or as JSON numbers (exact only up to
//! 2^53, so larger numbers are refused); `data` may be `null` for a plain transfer. Fields the
//! service adds around the transaction (confirmations, dates, …) are ignored; a field given
//! twice is an error, because two parsers could each take a different copy.

use std::fmt;

use alloy_primitives::{Address, Bytes, B256, U256};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::address::{parse_address, Checksum};
use crate::InputError;

/// Requests larger than this are refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Largest integer a JSON number may carry exactly (JavaScript's safe integer range).
const MAX_JSON_INTEGER: u64 = (1 << 53) - 1;

/// `operation` as the Safe encodes it. Values other than 0 and 1 are kept so a guard can refuse
/// them by name rather than the parser hiding them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation(pub u8);

impl Operation {
    pub const CALL: Self = Self(0);
    pub const DELEGATECALL: Self = Self(1);

    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "call",
            1 => "delegatecall",
            _ => "unknown operation",
        }
    }
}

/// The ten fields of a Safe transaction that its hash covers, besides the Safe itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTx {
    pub to: Address,
    pub value: U256,
    pub data: Bytes,
    pub operation: Operation,
    pub safe_tx_gas: U256,
    pub base_gas: U256,
    pub gas_price: U256,
    pub gas_token: Address,
    pub refund_receiver: Address,
    pub nonce: U256,
}

/// A parsed request: the Safe it is for, its transaction, and what the sender claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTxRequest {
    pub safe: Address,
    pub tx: SafeTx,
    /// The safeTxHash the sender claims. Only ever compared with ours, never signed.
    pub claimed_safe_tx_hash: Option<B256>,
    /// Address fields whose case carried no checksum (all lower or all upper case).
    pub unverified_addresses: Vec<&'static str>,
}

impl SafeTxRequest {
    /// Parses Safe Transaction Service JSON.
    pub fn from_json(input: &[u8]) -> Result<Self, InputError> {
        if input.len() > MAX_REQUEST_BYTES {
            let problem =
                format!("is {} bytes, more than the {MAX_REQUEST_BYTES}-byte limit", input.len());
            return Err(InputError::new("request", problem));
        }
        let object = parse_object(input)?;
        Self::from_object(&object)
    }

    /// Builds a request from an already parsed JSON object (a request inside a larger file).
    pub fn from_object(object: &JsonObject) -> Result<Self, InputError> {
        Self::from_map(&object.0)
    }

    /// [`Self::from_object`] over an object already parsed (a field of a larger document),
    /// without copying it.
    pub fn from_map(object: &serde_json::Map<String, Value>) -> Result<Self, InputError> {
        if object.get("primaryType").is_some() || object.get("types").is_some() {
            let problem = "has EIP-712 typed-data fields (types, primaryType): it is not a Safe \
                           transaction and is never signed";
            return Err(InputError::new("request", problem));
        }
        let mut fields = Fields { object, unverified: Vec::new() };

        let safe = fields.address("safe")?;
        let tx = SafeTx {
            to: fields.address("to")?,
            value: fields.uint("value")?,
            data: fields.data("data")?,
            operation: Operation(fields.small_uint("operation")?),
            safe_tx_gas: fields.uint("safeTxGas")?,
            base_gas: fields.uint("baseGas")?,
            gas_price: fields.uint("gasPrice")?,
            gas_token: fields.address("gasToken")?,
            refund_receiver: fields.address("refundReceiver")?,
            nonce: fields.uint("nonce")?,
        };
        let claimed_safe_tx_hash = fields.optional_hash("safeTxHash")?;

        Ok(Self { safe, tx, claimed_safe_tx_hash, unverified_addresses: fields.unverified })
    }
}

/// A JSON object whose keys are known to be unique.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonObject(pub serde_json::Map<String, Value>);

impl JsonObject {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(UniqueKeys)
    }
}

struct UniqueKeys;

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = JsonObject;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("field `{key}` appears twice")));
            }
            let value: Value = map.next_value()?;
            out.insert(key, value);
        }
        Ok(JsonObject(out))
    }
}

/// Parses bytes as one JSON object whose keys are unique at every depth.
pub fn parse_object(input: &[u8]) -> Result<JsonObject, InputError> {
    check_unique_keys(input)?;
    serde_json::from_slice(input)
        .map_err(|e| InputError::new("request", format!("not a valid JSON object: {e}")))
}

/// Refuses JSON in which any object, at any depth, has a key twice: two parsers could each
/// take a different copy, and then two programs would show two different requests.
pub fn check_unique_keys(input: &[u8]) -> Result<(), InputError> {
    let mut deserializer = serde_json::Deserializer::from_slice(input);
    let checked = UniqueDeep::deserialize(&mut deserializer).and_then(|_| deserializer.end());
    checked.map_err(|e| InputError::new("request", format!("not valid JSON: {e}")))
}

struct UniqueDeep;

impl<'de> Deserialize<'de> for UniqueDeep {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueDeepVisitor)
    }
}

struct UniqueDeepVisitor;

impl<'de> Visitor<'de> for UniqueDeepVisitor {
    type Value = UniqueDeep;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueDeep, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("field `{key}` appears twice")));
            }
            map.next_value::<UniqueDeep>()?;
        }
        Ok(UniqueDeep)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueDeep, A::Error> {
        while seq.next_element::<UniqueDeep>()?.is_some() {}
        Ok(UniqueDeep)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }

    fn visit_unit<E>(self) -> Result<UniqueDeep, E> {
        Ok(UniqueDeep)
    }
}

struct Fields<'a> {
    object: &'a serde_json::Map<String, Value>,
    unverified: Vec<&'static str>,
}

impl Fields<'_> {
    fn required(&self, name: &'static str) -> Result<&Value, InputError> {
        match self.object.get(name) {
            None => Err(InputError::new(name, "is missing")),
            Some(value) => Ok(value),
        }
    }

    fn address(&mut self, name: &'static str) -> Result<Address, InputError> {
        let Value::String(text) = self.required(name)? else {
            return Err(InputError::new(name, "must be an address string like \"0xAbC…\""));
        };
        let parsed = parse_address(name, text)?;
        if parsed.checksum == Checksum::Unverified {
            self.unverified.push(name);
        }
        Ok(parsed.address)
    }

    fn uint(&self, name: &'static str) -> Result<U256, InputError> {
        parse_uint(name, self.required(name)?)
    }

    fn small_uint(&self, name: &'static str) -> Result<u8, InputError> {
        let value = self.uint(name)?;
        u8::try_from(value)
            .map_err(|_| InputError::new(name, "must be 0 (call) or 1 (delegatecall)"))
    }

    fn data(&self, name: &'static str) -> Result<Bytes, InputError> {
        match self.required(name)? {
            Value::Null => Ok(Bytes::new()),
            Value::String(text) => parse_hex_bytes(name, text).map(Bytes::from),
            _ => Err(InputError::new(name, "must be a 0x-prefixed hex string or null")),
        }
    }

    fn optional_hash(&self, name: &'static str) -> Result<Option<B256>, InputError> {
        match self.object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => parse_hash(name, text).map(Some),
            Some(_) => Err(InputError::new(name, "must be a 0x-prefixed 32-byte hex string")),
        }
    }
}

/// An unsigned integer from a decimal string or an exact JSON number.
pub fn parse_uint(field: &str, value: &Value) -> Result<U256, InputError> {
    match value {
        Value::String(text) => parse_decimal(field, text),
        Value::Number(number) => match number.as_u64() {
            Some(n) if n <= MAX_JSON_INTEGER => Ok(U256::from(n)),
            Some(_) => Err(InputError::new(
                field,
                "JSON numbers above 2^53 are not exact; send the integer as a decimal string",
            )),
            None => Err(InputError::new(field, "must be a non-negative integer")),
        },
        _ => Err(InputError::new(field, "must be a decimal string or an integer")),
    }
}

fn parse_decimal(field: &str, text: &str) -> Result<U256, InputError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(InputError::new(field, "must be a decimal integer of digits 0-9 only"));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(InputError::new(field, "a decimal integer has no leading zeros"));
    }
    U256::from_str_radix(text, 10).map_err(|_| InputError::new(field, "is larger than 2^256 - 1"))
}

/// `0x` followed by an even number of hex digits.
pub fn parse_hex_bytes(field: &str, text: &str) -> Result<Vec<u8>, InputError> {
    let Some(digits) = text.strip_prefix("0x") else {
        return Err(InputError::new(field, "hex data must start with 0x"));
    };
    if digits.len() % 2 != 0 {
        return Err(InputError::new(field, "hex data must have an even number of digits"));
    }
    hex_to_bytes(digits)
        .ok_or_else(|| InputError::new(field, "contains a character that is not hex"))
}

/// A 32-byte hash written as `0x` and 64 hex digits.
pub fn parse_hash(field: &str, text: &str) -> Result<B256, InputError> {
    let bytes = parse_hex_bytes(field, text)?;
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| InputError::new(field, "a hash has exactly 32 bytes (64 hex digits)"))?;
    Ok(B256::from(array))
}

fn hex_to_bytes(digits: &str) -> Option<Vec<u8>> {
    digits
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| {
            let high = (pair[0] as char).to_digit(16)?;
            let low = (pair[1] as char).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S3: &str = r#"{
        "safe": "0x657ff0D4eC65D82b2bC1247b0a558bcd2f80A0f1",
        "to": "0x255C3912f91eF11bFDadd405F13144a823Da8cc5",
        "value": "100000000000000000", "data": null, "operation": 0,
        "safeTxGas": "0", "baseGas": "0", "gasPrice": "0",
        "gasToken": "0x0000000000000000000000000000000000000000",
        "refundReceiver": "0x0000000000000000000000000000000000000000", "nonce": 4
    }"#;

    fn with(field: &str, value: &str) -> String {
        let mut object: serde_json::Map<String, Value> =
            serde_json::from_str(S3).unwrap_or_default();
        match serde_json::from_str(value) {
            Ok(v) => object.insert(field.to_owned(), v),
            Err(_) => object.remove(field),
        };
        Value::Object(object).to_string()
    }

    fn field_of(json: &str) -> Option<String> {
        SafeTxRequest::from_json(json.as_bytes()).err().map(|e| e.field)
    }

    #[test]
    fn parses_service_shape() {
        let request = SafeTxRequest::from_json(S3.as_bytes()).map_err(|e| e.to_string());
        let request = request.as_ref().map(|r| (r.tx.value, r.tx.data.len(), r.tx.nonce));
        assert_eq!(request, Ok((U256::from(100_000_000_000_000_000u64), 0, U256::from(4))));
    }

    #[test]
    fn fail_each_field_is_named() {
        assert_eq!(field_of(&with("nonce", "missing")), Some("nonce".into()));
        assert_eq!(field_of(&with("value", "1.5")), Some("value".into()));
        assert_eq!(field_of(&with("value", "-1")), Some("value".into()));
        assert_eq!(field_of(&with("value", "9007199254740993")), Some("value".into()));
        assert_eq!(field_of(&with("value", "\"0x10\"")), Some("value".into()));
        assert_eq!(field_of(&with("value", "true")), Some("value".into()));
        assert_eq!(field_of(&with("data", "\"0x123\"")), Some("data".into()));
        assert_eq!(field_of(&with("data", "\"12\"")), Some("data".into()));
        assert_eq!(field_of(&with("operation", "256")), Some("operation".into()));
        assert_eq!(field_of(&with("safeTxHash", "\"0x12\"")), Some("safeTxHash".into()));
        let too_big = format!("\"{}0\"", U256::MAX);
        assert_eq!(field_of(&with("gasPrice", &too_big)), Some("gasPrice".into()));
    }

    #[test]
    fn fail_duplicate_key_and_not_json() {
        let duplicated = S3.replacen("\"nonce\": 4", "\"nonce\": 4, \"nonce\": 5", 1);
        assert_eq!(field_of(&duplicated), Some("request".into()));
        assert_eq!(field_of("[1,2]"), Some("request".into()));
        assert_eq!(field_of("nonsense"), Some("request".into()));
    }

    #[test]
    fn fail_nested_duplicates_typed_data_shape_and_leading_zeros() {
        let nested = S3.replacen("\"nonce\": 4", "\"nonce\": 4, \"x\": {\"a\": 1, \"a\": 2}", 1);
        assert_eq!(field_of(&nested), Some("request".into()));
        assert_eq!(field_of(&with("primaryType", "\"Mail\"")), Some("request".into()));
        assert_eq!(field_of(&with("nonce", "\"005\"")), Some("nonce".into()));
        assert!(field_of(&with("nonce", "\"0\"")).is_none());
    }

    #[test]
    fn errors_escape_control_characters() {
        let sneaky = S3.replacen(
            "\"nonce\": 4",
            "\"nonce\": 4, \"x\\n\\u001b[31mok\": 1, \"x\\n\\u001b[31mok\": 2",
            1,
        );
        let error =
            SafeTxRequest::from_json(sneaky.as_bytes()).map(|_| ()).unwrap_err().to_string();
        assert!(!error.contains('\n') && !error.contains('\u{1b}'), "{error}");
    }

    #[test]
    fn fail_oversized() {
        let padding = " ".repeat(MAX_REQUEST_BYTES);
        assert_eq!(field_of(&format!("{S3}{padding}")), Some("request".into()));
    }

    #[test]
    fn largest_integer_as_string() {
        let json = with("value", &format!("\"{}\"", U256::MAX));
        let value = SafeTxRequest::from_json(json.as_bytes()).map(|r| r.tx.value);
        assert_eq!(value.ok(), Some(U256::MAX));
    }
}
