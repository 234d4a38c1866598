#!/usr/bin/env python3
"""Writes the guard cases in this folder: one folder per case, request.json and case.json.

Run it again after changing a case; the files it writes are the ones committed. Folders whose
name starts with fail_ hold requests that must be refused. Selectors are written out (Python
has no Keccak in its standard library); decoding them correctly is part of what the tests check.
"""
import json
import os
import shutil

ZERO = "0x" + "00" * 20
SAFE = "0x111CEEee040739fD91D29C34C33E6B3E112F2177"
ALICE = "0x255C3912f91eF11bFDadd405F13144a823Da8cc5"
BOB = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
CAROL = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
ATTACKER = "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB"
USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
UNLISTED = "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"
TOKEN24 = "0x2222222222222222222222222222222222222222"
CALL_ONLY_130 = "0x40A2aCCbd92BCA938b02010E17A5b8929b49130D"
CALL_ONLY_141 = "0x9641d764fc13c8B624c04430C7356C1C7C8102e2"
CALL_ONLY_150 = "0xA83c336B20401Af773B6219BA5027174338D1836"
SENTINEL = "0x0000000000000000000000000000000000000001"

SEL = {
    "transfer": "a9059cbb", "approve": "095ea7b3", "transferFrom": "23b872dd",
    "multiSend": "8d80ff0a", "addOwnerWithThreshold": "0d582f13", "removeOwner": "f8dc5dd9",
    "swapOwner": "e318b52b", "changeThreshold": "694e80c3", "enableModule": "610b5925",
    "disableModule": "e009cfde", "setGuard": "e19a9dd9", "setFallbackHandler": "f08a0323",
    "changeMasterCopy": "7de7edef",
}


def word_addr(a):
    return "00" * 12 + a[2:].lower()


def word_int(n):
    return "%064x" % n


def call(fn, *words):
    return "0x" + SEL[fn] + "".join(words)


def batch(steps):
    packed = ""
    for op, to, value, data in steps:
        body = data[2:]
        packed += "%02x" % op + to[2:].lower() + word_int(value) + word_int(len(body) // 2) + body
    length = len(packed) // 2
    padded = packed + "0" * ((-len(packed)) % 64)
    return "0x" + SEL["multiSend"] + word_int(32) + word_int(length) + padded


def request(to, value=0, data=None, op=0, nonce=5, gas_price=0, safe=SAFE, **extra):
    r = {"safe": safe, "to": to, "value": str(value), "data": data, "operation": op,
         "safeTxGas": "0", "baseGas": "0", "gasPrice": str(gas_price), "gasToken": ZERO,
         "refundReceiver": ZERO, "nonce": nonce}
    r.update(extra)
    return r


def vault(version="1.3.0", next_nonce=5, chain=1):
    return {"chainId": chain, "safeVersion": version, "nextNonce": next_nonce}


CASES = {}


def case(name, about, req, expect, **more):
    CASES[name] = (req, dict(about=about, vault=more.pop("vault", vault()), expect=expect, **more))


def transfer(to, amount):
    return call("transfer", word_addr(to), word_int(amount))


# Passing cases.
case("ok_native_transfer", "0.25 ETH to Alice.",
     request(ALICE, value=250_000_000_000_000_000),
     {"verdict": "ok", "lines": ["Transfer 0.25 ETH (250000000000000000 wei) to " + ALICE]})
case("ok_usdc_transfer", "1,500 USDC (6 decimals) to Bob.",
     request(USDC, data=transfer(BOB, 1_500_000_000)),
     {"verdict": "ok", "lines": ["Transfer 1500 USDC (1500000000 base units) to " + BOB]})
case("ok_token_24_decimals", "A token with 24 decimals from a local token list.",
     request(TOKEN24, data=transfer(BOB, 1_234_500_000_000_000_000_000_000)),
     {"verdict": "ok", "lines": ["Transfer 1.2345 T24 (1234500000000000000000000 base units)"]},
     tokens=[{"chainId": 1, "address": TOKEN24, "symbol": "T24", "decimals": 24}])
case("ok_unknown_token", "A transfer of a token that is not listed: raw units, flagged.",
     request(UNLISTED, data=transfer(BOB, 7)),
     {"verdict": "ok", "warnings": ["unknown_token"],
      "lines": ["7 base units of an unlisted token (decimals unknown)"]})
case("ok_unlimited_approve", "approve(spender, 2^256-1) is shown as unlimited and flagged.",
     request(USDC, data=call("approve", word_addr(CAROL), "f" * 64)),
     {"verdict": "ok", "warnings": ["unlimited_approval"], "lines": ["UNLIMITED"]})
case("ok_transfer_from", "transferFrom is decoded.",
     request(USDC, data=call("transferFrom", word_addr(ALICE), word_addr(BOB), word_int(2_000_000))),
     {"verdict": "ok", "lines": ["Move 2 USDC (2000000 base units) from " + ALICE + " to " + BOB]})
case("ok_multisend_payroll", "A payroll batch of three USDC transfers through MultiSendCallOnly 1.4.1.",
     request(CALL_ONLY_141, op=1, data=batch([
         (0, USDC, 0, transfer(ALICE, 1_000_000_000)),
         (0, USDC, 0, transfer(BOB, 2_000_000_000)),
         (0, USDC, 0, transfer(CAROL, 3_500_000)),
     ])),
     {"verdict": "ok", "lines": ["MultiSend batch of 3 step(s)", "batch[2]: Transfer 3.5 USDC"]})
case("ok_unknown_calldata", "Calldata no decoder knows is shown raw, selector first, and flagged.",
     request(CAROL, data="0xdeadbeef0000"),
     {"verdict": "ok", "warnings": ["unknown_calldata"], "lines": ["selector 0xdeadbeef"]})
case("ok_nonce_ahead", "A request two places ahead of the next nonce is shown with its place.",
     request(ALICE, value=1, nonce=7),
     {"verdict": "ok", "warnings": ["queued_ahead"]})
case("ok_admin_allowed_by_policy", "addOwnerWithThreshold passes when the local policy allows it.",
     request(SAFE, data=call("addOwnerWithThreshold", word_addr(CAROL), word_int(2))),
     {"verdict": "ok", "lines": ["Safe: add owner " + CAROL + " and set the threshold to 2"]},
     policy={"allowedAdminOperations": ["addOwnerWithThreshold"]})
case("ok_gas_refund_allowed_by_policy",
     "A non-zero gasPrice passes when the policy allows refunds, and the refund is spelled out.",
     request(ALICE, value=1, gas_price=1),
     {"verdict": "ok", "warnings": ["gas_refund_allowed"]}, policy={"allowGasRefunds": True})
case("ok_rejection_after_signed_nonce",
     "The standard rejection (zero-value self-call, no data) may be signed for a nonce already signed.",
     request(SAFE),
     {"verdict": "ok", "rejection": True},
     history={"signedForNonce": "0x" + "ab" * 32})
case("ok_trusted_delegatecall_by_policy",
     "A delegatecall target the local policy trusts: the MultiSend 1.3.0 (not CallOnly) here.",
     request("0xA238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761", op=1,
             data=batch([(0, USDC, 0, transfer(ALICE, 5))])),
     {"verdict": "ok"},
     policy={"trustedDelegatecallTargets": {"1": ["0xA238CBeb142c10Ef7Ad8442C6D1f9E89e07e7761"]}})

# Refused cases.
case("fail_delegatecall_untrusted", "A delegatecall to a contract the policy does not trust.",
     request(ATTACKER, op=1, data="0x12345678"),
     {"verdict": "refused", "refusals": ["untrusted_delegatecall"]})
case("fail_multisend_hidden_delegatecall",
     "A MultiSend whose third step delegatecalls an untrusted contract.",
     request(CALL_ONLY_130, op=1, data=batch([
         (0, USDC, 0, transfer(ALICE, 10_000_000)),
         (0, BOB, 1_000_000_000_000_000, "0x"),
         (1, ATTACKER, 0, "0x12345678"),
     ])),
     {"verdict": "refused", "refusals": ["untrusted_delegatecall"], "places": ["batch[2]"]})
case("fail_multisend_nested_admin",
     "A batch inside a batch that changes the threshold.",
     request(CALL_ONLY_130, op=1, data=batch([
         (0, USDC, 0, transfer(ALICE, 1)),
         (1, CALL_ONLY_130, 0, batch([(0, SAFE, 0, call("changeThreshold", word_int(1)))])),
     ])),
     {"verdict": "refused", "refusals": ["admin_operation"], "places": ["batch[1].batch[0]"]})
case("fail_singleton_swap_by_delegatecall",
     "Safe 1.3.0 has no changeMasterCopy: a delegatecall to a contract that rewrites slot 0 is "
     "how the implementation is swapped, and the delegatecall guard refuses it.",
     request(ATTACKER, op=1, data="0xa9059cbb" + word_addr(ATTACKER) + word_int(0)),
     {"verdict": "refused", "refusals": ["untrusted_delegatecall"]})
case("fail_multisend_by_delegatecall_to_untrusted_multisend",
     "A batch sent through a look-alike MultiSend at an untrusted address.",
     request(ATTACKER, op=1, data=batch([(0, USDC, 0, transfer(ALICE, 1))])),
     {"verdict": "refused", "refusals": ["untrusted_delegatecall"]})
case("fail_malformed_batch", "A batch whose step declares more data than it has.",
     request(CALL_ONLY_130, op=1,
             data="0x8d80ff0a" + word_int(32) + word_int(85) + ("00" + ALICE[2:].lower() + word_int(0) + word_int(999)) + "00" * 11),
     {"verdict": "refused", "refusals": ["malformed_batch", "undecoded_delegatecall"]})
for fn, words, refused in [
    ("addOwnerWithThreshold", [word_addr(ATTACKER), word_int(1)], "admin_operation"),
    ("removeOwner", [word_addr(SENTINEL), word_addr(ALICE), word_int(1)], "admin_operation"),
    ("swapOwner", [word_addr(SENTINEL), word_addr(ALICE), word_addr(ATTACKER)], "admin_operation"),
    ("changeThreshold", [word_int(1)], "admin_operation"),
    ("enableModule", [word_addr(ATTACKER)], "admin_operation"),
    ("disableModule", [word_addr(SENTINEL), word_addr(CAROL)], "admin_operation"),
    ("setGuard", [word_addr(ATTACKER)], "admin_operation"),
    ("setFallbackHandler", [word_addr(ATTACKER)], "admin_operation"),
]:
    case("fail_admin_" + fn, fn + " on the Safe itself, not allowed by the default policy.",
         request(SAFE, data=call(fn, *words)),
         {"verdict": "refused", "refusals": [refused]})
case("fail_admin_changeMasterCopy", "changeMasterCopy on a Safe 1.1.1 (implementation swap).",
     request(SAFE, data=call("changeMasterCopy", word_addr(ATTACKER))),
     {"verdict": "refused", "refusals": ["admin_operation"]}, vault=vault("1.1.1"))
case("fail_change_master_copy_on_130",
     "changeMasterCopy does not exist on 1.3.0: even when allowed it would reach the fallback handler.",
     request(SAFE, data=call("changeMasterCopy", word_addr(ATTACKER))),
     {"verdict": "refused", "refusals": ["not_in_version"]},
     policy={"allowedAdminOperations": ["changeMasterCopy"]})
case("fail_multisend_step_to_zero_address_is_the_safe",
     "MultiSend 1.5.0 sends a step addressed to 0x0 to address(this), the Safe itself: an "
     "enableModule hidden that way is Safe administration (found by an attack review).",
     request(CALL_ONLY_150, op=1, data=batch([
         (0, ZERO, 0, call("enableModule", word_addr(ATTACKER))),
     ])),
     {"verdict": "refused", "refusals": ["admin_operation"], "places": ["batch[0]"]},
     vault=vault("1.5.0"))
case("fail_batch_step_to_zero_on_130_is_a_burn",
     "MultiSendCallOnly 1.3.0 calls the zero address for a step addressed to it: 1000 ETH would be "
     "burned, not kept by the Safe (found by an attack review).",
     request(CALL_ONLY_130, op=1, data=batch([(0, ZERO, 1000 * 10**18, "0x")])),
     {"verdict": "refused", "refusals": ["zero_address_call"], "lines": ["burned"]})
case("ok_batch_step_to_zero_on_150_is_the_safe",
     "MultiSendCallOnly 1.5.0 sends a step addressed to zero to the Safe: a value transfer to "
     "itself, shown as such.",
     request(CALL_ONLY_150, op=1, data=batch([(0, ZERO, 10**18, "0x")])),
     {"verdict": "ok", "lines": ["the Safe itself"]}, vault=vault("1.5.0"))
case("fail_non_canonical_approve",
     "An unlimited approve with one trailing byte: tokens ignore the byte, so it is refused "
     "rather than shown raw.",
     request(USDC, data=call("approve", word_addr(CAROL), "f" * 64) + "00"),
     {"verdict": "refused", "refusals": ["non_canonical_call"]})
case("fail_rejection_paying_a_refund_is_no_rejection",
     "A self-call with no value or data that pays a gas refund is not the standard rejection: "
     "it trips the wire for a signed nonce.",
     dict(request(SAFE, gas_price=1_000_000_000_000), baseGas="1000000000", gasToken=USDC,
          refundReceiver=ATTACKER),
     {"verdict": "refused", "refusals": ["tripwire"]},
     policy={"allowGasRefunds": True}, history={"signedForNonce": "0x" + "ab" * 32})
case("fail_unrecognized_self_call", "An unknown selector sent to the Safe itself.",
     request(SAFE, data="0xcafebabe"),
     {"verdict": "refused", "refusals": ["unrecognized_self_call"]})
case("fail_gas_refund", "A non-zero gasPrice makes the Safe pay whoever executes.",
     request(ALICE, value=1, gas_price=1),
     {"verdict": "refused", "refusals": ["gas_refund"]})
case("fail_unknown_operation", "operation 2 does not exist.",
     request(ALICE, value=1, op=2),
     {"verdict": "refused", "refusals": ["unknown_operation"]})
case("fail_nonce_used", "Nonce 3 when the vault's next nonce is 5.",
     request(ALICE, value=1, nonce=3),
     {"verdict": "refused", "refusals": ["nonce_used"]})
case("fail_nonce_too_far_ahead", "Nonce 26 is 21 ahead of 5; the default depth is 20.",
     request(ALICE, value=1, nonce=26),
     {"verdict": "refused", "refusals": ["nonce_too_far_ahead"]})
case("fail_tripwire_second_payload", "This approver already signed another payload for nonce 5.",
     request(ALICE, value=2),
     {"verdict": "refused", "refusals": ["tripwire"]},
     history={"signedForNonce": "0x" + "ab" * 32})
case("fail_open_incident", "An open incident on the vault blocks every signature.",
     request(ALICE, value=1),
     {"verdict": "refused", "refusals": ["open_incident"]},
     history={"openIncidents": 1})
case("fail_claimed_hash_mismatch", "The request claims a safeTxHash that is not the fields' hash.",
     request(ALICE, value=1, safeTxHash="0x" + "12" * 32),
     {"verdict": "refused", "refusals": ["hash_mismatch"]})
case("fail_safe_mismatch", "The request names another Safe than the vault record.",
     request(ALICE, value=1, safe=BOB),
     {"verdict": "refused", "refusals": ["safe_mismatch"]},
     vault=dict(vault(), address=SAFE))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in os.listdir(here):
        if os.path.isdir(os.path.join(here, entry)):
            shutil.rmtree(os.path.join(here, entry))
    for name, (req, meta) in sorted(CASES.items()):
        folder = os.path.join(here, name)
        os.makedirs(folder)
        for file, body in (("request.json", req), ("case.json", meta)):
            with open(os.path.join(folder, file), "w") as f:
                json.dump(body, f, indent=2)
                f.write("\n")
    print(len(CASES), "cases")


if __name__ == "__main__":
    main()
