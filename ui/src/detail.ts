// One request: what it does in plain words, every MultiSend step, warnings, the verdict, the
// hashes as a Ledger shows them, the approvals, the raw fields; approve or reject.
import { api, asProblem, type Detail } from "./ipc";
import { clear, el } from "./dom";
import { sentence } from "./format";
import type { Shell } from "./main";

const STEPS: [string, string][] = [
  ["checking", "Checking the request on the queue is unchanged and pending"],
  ["signing", "Signing with your key"],
  ["touch", "Touch your security key (where the vault asks for one)"],
  ["sending", "Sending the signature to the queue"],
  ["done", "The queue recorded the approval"],
];

function section(title: string, id: string, ...body: (Node | string)[]): HTMLElement {
  return el("section", { class: "card", id }, el("h2", {}, title), ...body);
}

function list(items: string[], id: string, cls = ""): HTMLUListElement {
  return el("ul", { id, class: cls }, ...items.map((item) => el("li", {}, item)));
}

function hashRow(label: string, value: string, id: string): HTMLElement {
  return el("div", { class: "hash" }, el("span", { class: "label" }, label), el("code", { id }, value));
}

export function detailScreen(shell: Shell, id: string): HTMLElement {
  const screen = el("section", { class: "screen detail", id: "screen-detail" });
  const body = el("div", { class: "body" });
  // While a confirmation or a rejection is open, live updates do not redraw the screen.
  let asking = false;
  screen.append(
    el("button", { class: "link", id: "back", onclick: () => shell.go({ name: "queue" }) }, "← Queue"),
    body,
  );

  async function load(): Promise<void> {
    shell.busy("Reading the request…");
    try {
      render(await api.detail(id));
    } catch (error) {
      shell.error(error);
    } finally {
      shell.busy(null);
    }
  }

  function render(detail: Detail): void {
    asking = false;
    clear(body);
    body.append(
      el(
        "h1",
        {},
        `Request ${detail.id} `,
        el("span", { class: `state ${detail.state}`, id: "detail-state" }, detail.state),
      ),
      el("p", { class: "sub" }, `Safe ${detail.safe} (version ${detail.safeVersion}) on chain ${detail.chainId}, nonce ${detail.nonce}`),
    );
    if (detail.marks.length > 0) {
      body.append(
        el(
          "div",
          { class: "banner danger", id: "marks" },
          el("strong", {}, "Marked: this request cannot be signed."),
          list(detail.marks, "mark-list"),
        ),
      );
    }
    body.append(section("What it does", "intent", list(detail.intent, "intent-lines")));
    if (detail.calls.length > 1) {
      const table = el(
        "table",
        { id: "steps" },
        el("tr", {}, ...["Step", "Operation", "To", "Value", "Action"].map((h) => el("th", {}, h))),
      );
      for (const call of detail.calls) {
        table.append(
          el(
            "tr",
            {},
            el("td", {}, call.path === "" ? "the transaction" : call.path),
            el("td", {}, call.operation === 1 ? "delegatecall" : "call"),
            el("td", {}, el("code", {}, call.to)),
            el("td", {}, call.value),
            el("td", {}, call.action + (call.selector ? ` (${call.selector})` : "")),
          ),
        );
      }
      body.append(section("Every step", "calls", table));
    }
    if (detail.warnings.length > 0) {
      body.append(section("Warnings", "warnings", list(detail.warnings.map((w) => w.message), "warning-list", "warn")));
    }
    body.append(
      section(
        "Verdict",
        "verdict",
        detail.verdict === "ok"
          ? el("p", { class: "ok", id: "verdict-text" }, "No guard refuses this request.")
          : el("div", {}, el("p", { class: "danger", id: "verdict-text" }, "Refused."), list(detail.reasons.map((r) => r.message), "reason-list")),
      ),
    );
    const hashes = section(
      "Compare with your device",
      "hashes",
      el("p", { class: "sub" }, "A Ledger signing this Safe transaction shows these two hashes, in this order:"),
      hashRow("Domain hash", detail.ledgerDomainHash, "domain-hash"),
      hashRow("Message hash", detail.ledgerMessageHash, "message-hash"),
      hashRow("safeTxHash", detail.safeTxHash, "safe-tx-hash"),
    );
    if (detail.claimedSafeTxHash !== null && detail.claimedSafeTxHash !== detail.safeTxHash) {
      hashes.append(el("p", { class: "danger" }, `The queue claims ${detail.claimedSafeTxHash}: it differs.`));
    }
    body.append(hashes);
    const approvals = section(
      "Approvals",
      "approvals",
      el("p", { id: "approval-count" }, `${detail.approvedBy.length} of ${detail.threshold ?? "?"} verified`),
      list(detail.approvedBy.map((owner) => `${owner} (signature verified)`), "approved-by"),
    );
    if (detail.unverifiedApprovals > 0) {
      approvals.append(el("p", { class: "warn" }, `${detail.unverifiedApprovals} approval(s) listed by the queue did not verify and are not counted.`));
    }
    body.append(approvals);
    const fields = el("table", { id: "raw-fields" });
    for (const [name, value] of Object.entries(detail.fields)) {
      fields.append(el("tr", {}, el("th", {}, name), el("td", {}, el("code", {}, String(value)))));
    }
    body.append(el("details", { class: "card", id: "raw" }, el("summary", {}, "Raw fields"), fields));
    body.append(actions(detail));
  }

  function actions(detail: Detail): HTMLElement {
    const box = el("section", { class: "card actions", id: "actions" });
    if (detail.canApprove) {
      box.append(el("button", { class: "primary", id: "approve", onclick: () => confirmApproval(detail, box) }, "Approve…"));
    } else {
      box.append(el("h2", {}, "This request cannot be approved here"), list(detail.whyNot, "why-not", "danger"));
    }
    if (detail.state === "pending") {
      box.append(el("button", { id: "reject", onclick: () => askReason(box) }, "Reject…"));
    }
    return box;
  }

  function confirmApproval(detail: Detail, box: HTMLElement): void {
    asking = true;
    clear(box);
    const steps = el("ol", { class: "steps", id: "approval-steps" });
    const stepItems = new Map<string, HTMLLIElement>();
    for (const [name, label] of STEPS) {
      const item = el("li", { "data-step": name }, label);
      stepItems.set(name, item);
      steps.append(item);
    }
    const mark = (name: string) => {
      let reached = false;
      for (const [step] of STEPS) {
        const item = stepItems.get(step);
        if (!item) continue;
        if (step === name) {
          item.className = "active";
          reached = true;
        } else if (!reached) {
          item.className = "done";
        }
      }
    };
    const sign = el("button", { class: "primary", id: "confirm-approve" }, "Sign and approve");
    const cancel = el("button", { id: "cancel-approve", onclick: () => render(detail) }, "Cancel");
    const pin = el("input", { id: "approve-pin", type: "password", autocomplete: "off" });
    box.append(
      el("h2", {}, "Approve this request?"),
      list(detail.intent, "confirm-intent"),
      el("p", {}, "You sign safeTxHash ", el("code", {}, detail.safeTxHash), "."),
    );
    if (detail.signer === "ledger") {
      box.append(
        el("p", { id: "ledger-compare" }, "Your Ledger shows two hashes. Sign only if they are these:"),
        el("p", {}, "Domain hash ", el("code", { id: "ledger-domain" }, detail.ledgerDomainHash)),
        el("p", {}, "Message hash ", el("code", { id: "ledger-message" }, detail.ledgerMessageHash)),
      );
    }
    if (detail.signer === "hsm") box.append(el("label", { class: "field" }, el("span", {}, "The token's PIN"), pin));
    const keyPin = el("input", { id: "approve-key-pin", type: "password", autocomplete: "off" });
    box.append(el("label", { class: "field" }, el("span", {}, "Security key PIN (only where the vault asks for a security key and your key has a PIN)"), keyPin));
    box.append(sign, cancel, steps);
    shell.onStep((payload) => {
      if (payload.id === detail.id) mark(payload.step);
    });
    sign.addEventListener("click", async () => {
      sign.disabled = true;
      cancel.disabled = true;
      shell.busy("Approving…");
      try {
        document.getElementById("approve-error")?.remove();
        const tokenPin = detail.signer === "hsm" ? pin.value : null;
        const securityKeyPin = keyPin.value || null;
        pin.value = "";
        keyPin.value = "";
        const answer = await api.approve(detail.id, detail.safeTxHash, tokenPin, securityKeyPin);
        mark("done");
        stepItems.get("done")?.classList.replace("active", "done");
        shell.notice(`The queue recorded your approval (${answer.signer}); the request is ${answer.state} with ${answer.approvals} approval(s).`);
        await load();
      } catch (error) {
        const problem = asProblem(error);
        box.append(el("p", { class: "danger", id: "approve-error", "data-code": problem.code }, sentence(problem)));
        cancel.disabled = false;
        // A wrong PIN or a locked Ledger can be put right and tried again.
        sign.disabled = false;
      } finally {
        shell.busy(null);
      }
    });
  }

  function askReason(box: HTMLElement): void {
    asking = true;
    clear(box);
    const reason = el("textarea", { id: "reject-reason", rows: "3", maxlength: "1000", placeholder: "Why is it rejected?" });
    const send = el("button", { class: "danger", id: "confirm-reject" }, "Reject");
    send.addEventListener("click", async () => {
      if (reason.value.trim() === "") {
        shell.error({ code: "reason_missing", message: "say why the request is rejected" });
        return;
      }
      send.disabled = true;
      shell.busy("Rejecting…");
      try {
        const state = await api.reject(id, reason.value);
        shell.notice(`The queue recorded the rejection; the request is ${state}.`);
        await load();
      } catch (error) {
        shell.error(error);
        send.disabled = false;
      } finally {
        shell.busy(null);
      }
    });
    box.append(el("h2", {}, "Reject this request"), reason, send, el("button", { onclick: () => void load() }, "Cancel"));
  }

  shell.onQueueChanged(() => {
    if (!asking) void load();
  });
  void load();
  return screen;
}
