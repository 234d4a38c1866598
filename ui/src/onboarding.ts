// First start (a store, a key, a queue, its vault records) and the lock screen.
import { api, asProblem, type ConnectArgs, type KeyArgs, type Status } from "./ipc";
import { clear, el } from "./dom";
import { sentence } from "./format";
import type { Shell } from "./main";

function field(label: string, input: HTMLElement, hint?: string): HTMLLabelElement {
  return el("label", { class: "field" }, el("span", {}, label), input, hint ? el("small", {}, hint) : null);
}

function failure(error: unknown, id: string): HTMLParagraphElement {
  const problem = asProblem(error);
  return el("p", { class: "danger", id, "data-code": problem.code }, sentence(problem));
}

export function lockScreen(shell: Shell): HTMLElement {
  const status = shell.status();
  const passphrase = el("input", { id: "unlock-passphrase", type: "password", autocomplete: "current-password" });
  const result = el("div", { id: "unlock-result" });
  const unlock = el("button", { class: "primary", id: "unlock" }, "Unlock");
  const form = el(
    "form",
    { class: "screen narrow", id: "screen-lock" },
    el("h1", {}, "Countersign is locked"),
    status.protection === "passphrase"
      ? field("Passphrase", passphrase)
      : el("p", { class: "sub" }, "This store's key is kept by the system keyring, which hands it back without asking."),
    unlock,
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    unlock.disabled = true;
    clear(result);
    try {
      await api.unlock(status.protection === "passphrase" ? passphrase.value : null);
      passphrase.value = "";
      const next = await shell.refreshStatus();
      shell.go(next.keys.length > 0 && next.queue !== null ? { name: "queue" } : { name: "onboarding" });
    } catch (error) {
      result.append(failure(error, "unlock-error"));
      unlock.disabled = false;
    }
  });
  queueMicrotask(() => passphrase.focus());
  return form;
}

export function onboardingScreen(shell: Shell): HTMLElement {
  const screen = el("section", { class: "screen narrow", id: "screen-onboarding" }, el("h1", {}, "Set up Countersign"));
  const step = el("div", { class: "step" });
  screen.append(step);

  function show(status: Status): void {
    clear(step);
    if (status.store === "none") step.append(storeStep());
    else if (status.keys.length === 0) step.append(keyStep());
    else if (status.queue === null) step.append(queueStep());
    else step.append(vaultStep());
  }

  async function next(): Promise<void> {
    show(await shell.refreshStatus());
  }

  function storeStep(): HTMLElement {
    const useKeyring = el("input", { type: "checkbox", id: "use-keyring" });
    const passphrase = el("input", { type: "password", id: "new-passphrase", autocomplete: "new-password" });
    const again = el("input", { type: "password", id: "new-passphrase-again", autocomplete: "new-password" });
    const result = el("div", {});
    const create = el("button", { class: "primary", id: "create-store" }, "Create the store");
    create.addEventListener("click", async () => {
      clear(result);
      if (!useKeyring.checked && passphrase.value !== again.value) {
        result.append(el("p", { class: "danger" }, "The two passphrases differ."));
        return;
      }
      create.disabled = true;
      try {
        await api.createStore(useKeyring.checked ? null : passphrase.value);
        passphrase.value = "";
        again.value = "";
        await next();
      } catch (error) {
        result.append(failure(error, "create-error"));
        create.disabled = false;
      }
    });
    return el(
      "div",
      { id: "step-store" },
      el("h2", {}, "1. A local store"),
      el("p", { class: "sub" }, "Countersign keeps its keys and its copy of the queue encrypted on this computer."),
      field("Passphrase (12 characters or more)", passphrase),
      field("The passphrase again", again),
      el("label", { class: "check" }, useKeyring, " No passphrase: let the system keyring keep the key. Locking then only hides the window, because the keyring gives the key back without asking."),
      create,
      result,
    );
  }

  function keyStep(): HTMLElement {
    const label = el("input", { id: "key-label", placeholder: "e.g. treasury-approver" });
    const secret = el("input", { id: "key-secret", type: "password", placeholder: "64 hex characters", autocomplete: "off" });
    const account = el("input", { id: "ledger-account", type: "number", min: "0", value: "0" });
    const module = el("input", { id: "hsm-module", value: "/usr/lib/softhsm/libsofthsm2.so" });
    const token = el("input", { id: "hsm-token", placeholder: "the token's label" });
    const keyLabel = el("input", { id: "hsm-key", placeholder: "the key's label in the token" });
    const pin = el("input", { id: "hsm-pin", type: "password", autocomplete: "off" });
    const generate = el("input", { id: "hsm-generate", type: "checkbox" });
    const result = el("div", {});
    const add = async (args: KeyArgs, wait: string) => {
      clear(result);
      shell.busy(wait);
      try {
        const address = await api.addKey(args);
        secret.value = "";
        pin.value = "";
        shell.notice(`Key ${address} is ready. Give this address to your queue's admin to enroll.`);
        await next();
      } catch (error) {
        result.append(failure(error, "key-error"));
      } finally {
        shell.busy(null);
      }
    };
    const name = () => label.value || null;
    return el(
      "div",
      { id: "step-key" },
      el("h2", {}, "2. Your signing key"),
      field("Label", label),
      el("button", { class: "primary", id: "new-key", onclick: () => void add({ kind: "software", secretHex: null, label: name() }, "Making the key…") }, "Make a new key"),
      field("Or import a secret key", secret),
      el("button", { id: "import-key", onclick: () => void add({ kind: "software", secretHex: secret.value, label: name() }, "Importing the key…") }, "Import the key"),
      el("h3", {}, "Or a Ledger"),
      el("p", { class: "sub" }, "Plug it in, unlock it and open the Ethereum app. It shows the address: confirm it on the device."),
      field("Account (44'/60'/N'/0/0)", account),
      el("button", { id: "use-ledger", onclick: () => void add({ kind: "ledger", account: Number(account.value) || 0, label: name() }, "Confirm the address on your Ledger…") }, "Use the Ledger"),
      el("h3", {}, "Or a key in an HSM (PKCS#11)"),
      field("Module", module),
      field("Token label", token),
      field("Key label", keyLabel),
      field("PIN (not kept: asked at each approval)", pin),
      el("label", { class: "check" }, generate, " Make the key in the token if none has that label"),
      el("button", {
        id: "use-hsm",
        onclick: () => void add({ kind: "hsm", module: module.value, token: token.value, keyLabel: keyLabel.value, pin: pin.value, generate: generate.checked, label: name() }, "Opening the token…"),
      }, "Use the token's key"),
      result,
    );
  }

  function queueStep(): HTMLElement {
    const url = el("input", { id: "queue-url", placeholder: "https://queue.example:8443" });
    const pin = el("input", { id: "queue-pin", placeholder: "pin-sha256 as printed by the queue" });
    const pin2 = el("input", { id: "queue-pin-2", placeholder: "optional: the next pin, during a rotation" });
    const apiKey = el("input", { id: "queue-key", type: "password", autocomplete: "off" });
    const initiators = el("textarea", { id: "queue-initiators", rows: "2", placeholder: "one address a line" });
    const result = el("div", { id: "queue-result" });
    const args = (): ConnectArgs => ({
      url: url.value.trim(),
      pins: [pin.value, pin2.value].map((p) => p.trim()).filter((p) => p !== ""),
      apiKey: apiKey.value,
      initiators: initiators.value.split(/\s+/).filter((a) => a !== ""),
    });
    const test = el("button", { id: "test-queue" }, "Test the connection");
    const connect = el("button", { class: "primary", id: "connect-queue" }, "Connect");
    test.addEventListener("click", async () => {
      clear(result);
      shell.busy("Testing the connection…");
      try {
        const member = await api.testQueue(args());
        result.append(el("p", { class: "ok", id: "queue-ok" }, `The pin matches and the key works: you are ${member.id} (${member.role}).`));
      } catch (error) {
        result.append(failure(error, "queue-error"));
      } finally {
        shell.busy(null);
      }
    });
    connect.addEventListener("click", async () => {
      clear(result);
      shell.busy("Connecting…");
      try {
        await api.connectQueue(args());
        apiKey.value = "";
        await next();
      } catch (error) {
        result.append(failure(error, "queue-error"));
      } finally {
        shell.busy(null);
      }
    });
    return el(
      "div",
      { id: "step-queue" },
      el("h2", {}, "3. The approval queue"),
      field("Address", url),
      field("Pin", pin, "The queue proves who it is by this pin, not by its name."),
      field("Second pin", pin2),
      field("API key", apiKey),
      field("Initiators you trust", initiators),
      test,
      connect,
      result,
    );
  }

  function vaultStep(): HTMLElement {
    const box = el("div", { id: "step-vaults" }, el("h2", {}, "4. Vault records"));
    const listing = el("div", {});
    box.append(
      el("p", { class: "sub" }, "Countersign checks every request against the vault records you pin here. Compare the owners and threshold with your treasury's own record before pinning."),
      listing,
      el("button", { class: "primary", id: "open-queue", onclick: () => shell.go({ name: "queue" }) }, "Open the queue"),
    );
    const load = async () => {
      clear(listing);
      try {
        for (const vault of await api.queueVaults()) {
          const record = vault.queue;
          const row = el(
            "div",
            { class: "card", "data-address": record.address },
            el("strong", {}, `${record.address} on chain ${record.chainId}`),
            el("p", {}, `Safe ${record.safeVersion}, ${record.threshold ?? "?"} of ${record.owners.length}: ${record.owners.join(", ")}`),
          );
          if (vault.agrees === true) row.append(el("p", { class: "ok" }, "Pinned; it agrees with the queue."));
          else {
            if (vault.agrees === false) row.append(el("p", { class: "danger" }, "Your pinned record differs from the queue's."));
            row.append(
              el("button", {
                class: "pin-vault",
                onclick: async () => {
                  try {
                    await api.pinQueueVault(record);
                    await load();
                  } catch (error) {
                    row.append(failure(error, "pin-error"));
                  }
                },
              }, "I checked it: pin this record"),
            );
          }
          listing.append(row);
        }
      } catch (error) {
        listing.append(failure(error, "vaults-error"));
      }
    };
    void load();
    return box;
  }

  show(shell.status());
  return screen;
}
