// The screens against a mocked backend: the queue's table renders a window of 10,000 rows,
// moves with the keyboard and filters; a refused request shows its reasons and no approve
// button; approving shows each step and the queue's answer; a live update keeps the chosen
// request selected and the rows under the pointer in place.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { emit } from "@tauri-apps/api/event";
import type { Detail, Row } from "../src/ipc";

const rows: Row[] = Array.from({ length: 10_000 }, (_, i) => ({
  id: `r${i}`,
  state: "pending",
  chainId: 1,
  chain: "Ethereum",
  safe: "0x5aFE3855358E112B5647B952709E6165e1c1eEEe",
  vault: "Treasury",
  nonce: String(i),
  operation: "transfer",
  asset: i === 7 ? "DAI" : "USDC",
  amount: String(1000 + i),
  destination: "0x28C6c06298d514Db089934071355E5743bf21d60",
  destinationLabel: null,
  createdAt: 1_700_000_000,
  approvals: 0,
  threshold: 2,
  marked: false,
  approvedBy: [],
}));

function detail(id: string): Detail {
  const refused = id === "r1";
  return {
    id,
    state: "pending",
    chainId: 1,
    safe: "0x5aFE3855358E112B5647B952709E6165e1c1eEEe",
    safeVersion: "1.3.0",
    nonce: "1",
    nextNonce: "1",
    domainHash: `0x${"ab".repeat(32)}`,
    messageHash: `0x${"cd".repeat(32)}`,
    safeTxHash: `0x${"ef".repeat(32)}`,
    ledgerDomainHash: `0x${"AB".repeat(32)}`,
    ledgerMessageHash: `0x${"CD".repeat(32)}`,
    claimedSafeTxHash: null,
    verdict: refused ? "refused" : "ok",
    reasons: refused ? [{ code: "untrusted_delegatecall", message: "the transaction is a delegatecall the local policy does not trust" }] : [],
    warnings: [],
    rejection: false,
    intent: ["Transfer 1000 USDC to 0x28C6…"],
    calls: [],
    fields: { to: "0xA0b8", value: "0" },
    marks: [],
    approvedBy: [],
    unverifiedApprovals: 0,
    threshold: 2,
    createdAt: 1_700_000_000,
    canApprove: !refused,
    whyNot: refused ? ["the transaction is a delegatecall the local policy does not trust."] : [],
    signer: id === "r3" ? "hsm" : id === "r4" ? "ledger" : "software",
  };
}

const calls: string[] = [];
/** What each `queue_rows` asked for: a number of newest rows, or all. */
const rowAsks: (number | "all")[] = [];
const connects: Record<string, unknown>[] = [];
const approvals: Record<string, unknown>[] = [];

beforeAll(async () => {
  document.body.innerHTML = '<div id="app"></div>';
  // happy-dom lays nothing out: give the table's viewport a height.
  Object.defineProperty(HTMLElement.prototype, "clientHeight", { configurable: true, get: () => 720 });
  Object.defineProperty(HTMLElement.prototype, "clientWidth", { configurable: true, get: () => 1200 });
  mockIPC(
    (cmd, payload) => {
      calls.push(cmd);
      const args = (payload as { args?: Record<string, string> } | undefined)?.args ?? {};
      switch (cmd) {
        case "app_status":
          return { store: "unlocked", protection: "passphrase", queue: "https://127.0.0.1:1", keys: ["0xA"] };
        case "queue_rows":
          rowAsks.push(args.first === undefined ? "all" : Number(args.first));
          return args.first === undefined ? rows : rows.slice(0, Number(args.first));
        case "request_detail":
          return detail(String(args.id));
        case "settings":
          return {
            queue: { url: "https://queue.example:8443", pins: ["PIN1"], initiators: ["0xI"] },
            idleLockSeconds: 300,
            protection: "keyring",
            canTrulyLock: false,
            vaults: [],
            keys: [{ address: "0xA", kind: "software", label: "alice" }],
            dataDir: "/tmp/x",
          };
        case "register_security_key":
          calls.push(`register:${String(args.keyPin)}`);
          return "cred-1";
        case "connect_queue":
          connects.push(args as Record<string, unknown>);
          return { id: "alice", role: "approver" };
        case "approve_request":
          approvals.push(args as Record<string, unknown>);
          void emit("approval-step", { id: args.id, step: "checking" });
          void emit("approval-step", { id: args.id, step: "signing" });
          void emit("approval-step", { id: args.id, step: "sending" });
          return { signer: "0xA", state: "pending", approvals: 1 };
        default:
          throw { code: "unknown", message: `no mock for ${cmd}` };
      }
    },
    { shouldMockEvents: true },
  );
  await import("../src/main");
});

afterAll(() => clearMocks());

async function until<T>(find: () => T | null | undefined, what: string): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const found = find();
    if (found) return found;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`never found: ${what}`);
}

describe("the queue screen", () => {
  it("renders a window of the 10,000 rows, not all of them", async () => {
    const count = await until(() => {
      const c = document.getElementById("row-count");
      return c?.textContent?.startsWith("10000") ? c : null;
    }, "the row count");
    expect(count.textContent).toBe("10000 of 10000 requests");
    const rendered = document.querySelectorAll("#queue-table .row").length;
    expect(rendered).toBeGreaterThan(0);
    expect(rendered).toBeLessThan(100);
    // A first screenful of the newest rows, then all of them.
    expect(rowAsks.slice(0, 2)).toEqual([100, "all"]);
  });

  it("moves the selection with the arrow keys", async () => {
    const table = document.getElementById("queue-table") as HTMLElement;
    table.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
    table.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
    const selected = document.querySelector("#queue-table .row.selected") as HTMLElement;
    expect(selected.dataset.id).toBe("r2");
  });

  it("filters by text", async () => {
    const search = document.getElementById("filter-text") as HTMLInputElement;
    search.value = "dai";
    search.dispatchEvent(new Event("input"));
    expect(document.getElementById("row-count")?.textContent).toBe("1 of 10000 requests");
    expect((document.querySelector("#queue-table .row") as HTMLElement).dataset.id).toBe("r7");
    search.value = "";
    search.dispatchEvent(new Event("input"));
  });

  it("keeps the chosen request selected when a live update adds one above it", async () => {
    const selectedId = () => (document.querySelector("#queue-table .row.selected") as HTMLElement | null)?.dataset.id;
    // The filter left r7 alone, selected; cleared, the filter keeps it selected.
    expect(selectedId()).toBe("r7");
    rows.unshift({ ...(rows[0] as Row), id: "r-new", nonce: "10000" });
    await emit("queue-changed", null);
    await until(() => document.getElementById("row-count")?.textContent?.startsWith("10001 of 10001") ?? null, "the new row");
    expect(selectedId()).toBe("r7");
    // Enter opens the request chosen, not the one that moved into its place.
    (document.getElementById("queue-table") as HTMLElement).dispatchEvent(
      new KeyboardEvent("keydown", { key: "Enter", bubbles: true }),
    );
    const heading = await until(() => document.querySelector("#screen-detail h1"), "the request screen");
    expect(heading.textContent).toContain("Request r7 ");
    rows.shift();
    (document.getElementById("back") as HTMLElement).click();
    await until(() => document.getElementById("row-count")?.textContent?.startsWith("10000 of 10000") ?? null, "the rows again");
    await until(() => document.querySelector('#queue-table .row[data-id="r1"]'), "row r1");
  });

  it("keeps a row's node through a reload that shows it the same, so that a click on it holds", async () => {
    const before = document.querySelector('#queue-table .row[data-id="r3"]');
    expect(before).not.toBeNull();
    const asked = rowAsks.length;
    await emit("queue-changed", null);
    await until(() => (rowAsks.length > asked ? true : null), "the reload");
    await new Promise((r) => setTimeout(r, 20));
    expect(document.querySelector('#queue-table .row[data-id="r3"]')).toBe(before);
    // And a row whose content changed is drawn anew.
    const changed = rows[3] as Row;
    rows[3] = { ...changed, approvals: 1 };
    await emit("queue-changed", null);
    await until(() => (document.querySelector('#queue-table .row[data-id="r3"]') !== before ? true : null), "r3 redrawn");
    expect(document.querySelector('#queue-table .row[data-id="r3"]')?.textContent).toContain("1 of 2");
    rows[3] = changed;
    await emit("queue-changed", null);
    await until(() => (document.querySelector('#queue-table .row[data-id="r3"]')?.textContent?.includes("0 of 2") ? true : null), "r3 as it was");
  });

  it("keeps the rows under the pointer in place when a live update adds one above them", async () => {
    const table = document.getElementById("queue-table") as HTMLElement;
    expect(table.scrollTop).toBe(0);
    table.dispatchEvent(new PointerEvent("pointerenter"));
    rows.unshift({ ...(rows[0] as Row), id: "r-new", nonce: "10000" });
    await emit("queue-changed", null);
    await until(() => document.getElementById("row-count")?.textContent?.startsWith("10001 of 10001") ?? null, "the new row");
    // r0 was the top row under the pointer; it still is: the new request is just above.
    expect(table.scrollTop).toBe(36);
    table.dispatchEvent(new PointerEvent("pointerleave"));
    rows.shift();
    await emit("queue-changed", null);
    await until(() => document.getElementById("row-count")?.textContent?.startsWith("10000 of 10000") ?? null, "the rows again");
    table.scrollTop = 0;
  });
});

describe("a request", () => {
  it("that a guard refuses shows why and offers no approval", async () => {
    (document.querySelector('#queue-table .row[data-id="r1"]') as HTMLElement).click();
    const why = await until(() => document.getElementById("why-not"), "the reasons");
    expect(why.textContent).toContain("does not trust");
    expect(document.getElementById("approve")).toBeNull();
    expect(document.getElementById("domain-hash")?.textContent).toBe(`0x${"AB".repeat(32)}`);
    (document.getElementById("back") as HTMLElement).click();
  });

  it("is approved after an explicit confirmation, each step shown", async () => {
    const row = await until(() => document.querySelector('#queue-table .row[data-id="r0"]') as HTMLElement | null, "row r0");
    row.click();
    const approve = await until(() => document.getElementById("approve"), "the approve button");
    expect(calls.filter((c) => c === "approve_request")).toHaveLength(0);
    approve.click();
    expect(calls.filter((c) => c === "approve_request")).toHaveLength(0);
    (document.getElementById("confirm-approve") as HTMLElement).click();
    const notice = await until(() => {
      const m = document.getElementById("message");
      return m?.textContent?.includes("recorded your approval") ? m : null;
    }, "the queue's acknowledgement");
    expect(notice.textContent).toContain("1 approval(s)");
    expect(calls.filter((c) => c === "approve_request")).toHaveLength(1);
  });
});

describe("a hardware signer", () => {
  async function confirmScreen(id: string): Promise<HTMLElement> {
    (document.getElementById("back") as HTMLElement | null)?.click();
    const row = await until(() => document.querySelector(`#queue-table .row[data-id="${id}"]`) as HTMLElement | null, `row ${id}`);
    row.click();
    (await until(() => document.getElementById("approve"), "the approve button")).click();
    return until(() => document.getElementById("confirm-approve"), "the confirmation");
  }

  it("on a Ledger shows the two hashes the device shows", async () => {
    await confirmScreen("r4");
    expect(document.getElementById("ledger-domain")?.textContent).toBe(`0x${"AB".repeat(32)}`);
    expect(document.getElementById("ledger-message")?.textContent).toBe(`0x${"CD".repeat(32)}`);
    expect(document.getElementById("approve-pin")).toBeNull();
    (document.getElementById("cancel-approve") as HTMLElement).click();
  });

  it("in an HSM asks for the token's PIN and sends it with this approval only", async () => {
    const confirm = await confirmScreen("r3");
    expect(document.getElementById("ledger-domain")).toBeNull();
    const pin = document.getElementById("approve-pin") as HTMLInputElement;
    pin.value = "1234";
    confirm.click();
    await until(() => approvals.find((a) => a.id === "r3"), "the approval");
    expect(approvals.find((a) => a.id === "r3")?.pin).toBe("1234");
    expect(approvals.find((a) => a.id === "r0")?.pin).toBeNull();
    expect(pin.value).toBe("");
  });
});

describe("the settings", () => {
  it("change the same queue's pins and key, and say a keyring store only hides", async () => {
    (document.getElementById("nav-settings") as HTMLElement).click();
    const note = await until(() => document.getElementById("lock-note"), "the lock note");
    expect(note.textContent).toContain("only hides the window");
    (document.getElementById("settings-pin-2") as HTMLInputElement).value = "PIN2";
    (document.getElementById("settings-key") as HTMLInputElement).value = "csk_new";
    (document.getElementById("save-queue") as HTMLElement).click();
    await until(() => document.querySelector("#settings-queue-result .ok"), "the saved answer");
    expect(connects).toHaveLength(1);
    expect(connects[0]).toEqual({
      url: "https://queue.example:8443",
      pins: ["PIN1", "PIN2"],
      apiKey: "csk_new",
      initiators: ["0xI"],
    });
    expect((document.getElementById("settings-key") as HTMLInputElement).value).toBe("");
  });

  it("register a security key, its PIN used once and cleared", async () => {
    const pin = document.getElementById("register-key-pin") as HTMLInputElement;
    pin.value = "2468";
    (document.getElementById("register-key") as HTMLElement).click();
    const ok = await until(() => document.getElementById("register-key-ok"), "the registration");
    expect(ok.textContent).toContain("cred-1");
    expect(ok.textContent).toContain("admin confirms");
    expect(calls).toContain("register:2468");
    expect(pin.value).toBe("");
  });
});
