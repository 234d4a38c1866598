// The app's commands, typed. Every command answers its data or rejects with a Problem.
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";

export interface Problem {
  code: string;
  message: string;
}

export function isProblem(value: unknown): value is Problem {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as Problem).code === "string" &&
    typeof (value as Problem).message === "string"
  );
}

/** A rejection as a Problem, whatever was thrown. */
export function asProblem(error: unknown): Problem {
  if (isProblem(error)) return error;
  return { code: "internal", message: String(error) };
}

export interface Status {
  store: "none" | "locked" | "unlocked";
  protection: "keyring" | "passphrase" | null;
  queue: string | null;
  keys: string[];
  /** The signing key's kind. */
  signer: SignerKind | null;
}

export type SignerKind = "software" | "ledger" | "hsm";

/** The signer to set up, as `add_key` takes it. */
export type KeyArgs =
  | { kind: "software"; secretHex: string | null; label: string | null }
  | { kind: "ledger"; account: number; label: string | null }
  | { kind: "hsm"; module: string; token: string; keyLabel: string; pin: string; generate: boolean; label: string | null };

export interface Row {
  id: string;
  state: string;
  chainId: number;
  chain: string;
  safe: string;
  vault: string | null;
  nonce: string;
  operation: string;
  asset: string;
  amount: string;
  destination: string | null;
  destinationLabel: string | null;
  createdAt: number;
  approvals: number;
  threshold: number | null;
  marked: boolean;
  approvedBy: string[];
}

export interface Reason {
  code: string;
  message: string;
}

export interface CallStep {
  path: string;
  operation: number;
  to: string;
  value: string;
  action: string;
  selector: string | null;
  dataLength: number;
}

export interface Detail {
  id: string;
  state: string;
  chainId: number;
  safe: string;
  safeVersion: string;
  nonce: string;
  nextNonce: string | null;
  domainHash: string;
  messageHash: string;
  safeTxHash: string;
  /** The signing key's kind: a Ledger shows the two hashes below; an HSM needs its PIN. */
  signer?: SignerKind | null;
  ledgerDomainHash: string;
  ledgerMessageHash: string;
  claimedSafeTxHash: string | null;
  verdict: "ok" | "refused";
  reasons: Reason[];
  warnings: Reason[];
  rejection: boolean;
  intent: string[];
  calls: CallStep[];
  fields: Record<string, string | number>;
  marks: string[];
  approvedBy: string[];
  unverifiedApprovals: number;
  threshold: number | null;
  createdAt: number;
  canApprove: boolean;
  whyNot: string[];
}

export interface SyncSummary {
  fetched: number;
  marked: { id: string; why: string }[];
  incidents: string[];
  vaultDifferences: string[];
  more: boolean;
  notified: string[];
}

export interface ApproveAnswer {
  signer: string;
  state: string;
  approvals: number;
}

export interface Incident {
  id: string;
  vault: string;
  kind: string;
  openedAt: number;
  detail: { reason?: string; request?: string };
}

export interface VaultRecord {
  chainId: number;
  address: string;
  safeVersion: string;
  owners: string[];
  threshold: number | null;
  nextNonce: string | null;
  label: string | null;
}

export interface Settings {
  queue: { url: string; pins: string[]; initiators: string[] } | null;
  idleLockSeconds: number;
  protection: "keyring" | "passphrase";
  canTrulyLock: boolean;
  vaults: VaultRecord[];
  keys: { address: string; kind: string; label: string | null }[];
  dataDir: string;
}

export interface QueueVault {
  queue: VaultRecord;
  pinned: VaultRecord | null;
  agrees: boolean | null;
}

export interface Member {
  id: string;
  role: string;
}

export interface ConnectArgs {
  url: string;
  pins: string[];
  apiKey: string;
  initiators: string[];
}

async function call<T>(command: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(command, args === undefined ? {} : { args });
  } catch (error) {
    throw asProblem(error);
  }
}

export const api = {
  status: () => call<Status>("app_status"),
  createStore: (passphrase: string | null) => call<Status>("create_store", { passphrase }),
  unlock: (passphrase: string | null) => call<Status>("unlock", { passphrase }),
  lock: () => call<boolean>("lock"),
  addKey: (args: KeyArgs) => call<string>("add_key", { ...args }),
  testQueue: (args: ConnectArgs) => call<Member>("test_queue", { ...args }),
  connectQueue: (args: ConnectArgs) => call<Member>("connect_queue", { ...args }),
  sync: () => call<SyncSummary>("sync_queue"),
  /**
   * Every row, or with `first` only the newest ones (a first screenful). The backend answers
   * raw JSON bytes (an ArrayBuffer) to spare a conversion.
   */
  rows: async (first?: number) => {
    const answer = await call<ArrayBuffer | Row[]>(
      "queue_rows",
      first === undefined ? undefined : { first },
    );
    return Array.isArray(answer) ? answer : (JSON.parse(new TextDecoder().decode(answer)) as Row[]);
  },
  detail: (id: string) => call<Detail>("request_detail", { id }),
  /** `pin` is the HSM token's, `keyPin` the security key's: for this approval only. */
  approve: (id: string, safeTxHash: string, pin: string | null = null, keyPin: string | null = null) =>
    call<ApproveAnswer>("approve_request", { id, safeTxHash, pin, keyPin }),
  registerSecurityKey: (keyPin: string | null) => call<string>("register_security_key", { keyPin }),
  reject: (id: string, reason: string) => call<string>("reject_request", { id, reason }),
  incidents: () => call<Incident[]>("incidents"),
  clearIncident: (id: string, note: string) => call<null>("clear_incident", { id, note }),
  settings: () => call<Settings>("settings"),
  setIdleLock: (seconds: number) => call<number>("set_idle_lock", { seconds }),
  queueVaults: () => call<QueueVault[]>("queue_vaults"),
  /** Pins the record as shown: the backend refuses if the queue's record is another. */
  pinQueueVault: (record: VaultRecord) =>
    call<VaultRecord>("pin_queue_vault", {
      chainId: record.chainId,
      address: record.address,
      safeVersion: record.safeVersion,
      owners: record.owners,
      threshold: record.threshold,
    }),
  active: () => call<null>("user_active"),
};

export type AppEvent = "approval-step" | "locked" | "queue-changed" | "live";

export function on<T>(event: AppEvent, handler: (payload: T) => void): Promise<UnlistenFn> {
  return listen<T>(event, (e) => handler(e.payload));
}
