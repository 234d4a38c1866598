// Incidents (what tripped them; clearing one with a note) and settings.
import { api, asProblem } from "./ipc";
import { clear, el } from "./dom";
import { sentence } from "./format";
import type { Shell } from "./main";

export function incidentsScreen(shell: Shell): HTMLElement {
  const screen = el("section", { class: "screen", id: "screen-incidents" }, el("h1", {}, "Open incidents"));
  const listing = el("div", { id: "incident-list" });
  screen.append(listing);
  const load = async () => {
    clear(listing);
    try {
      const incidents = await api.incidents();
      if (incidents.length === 0) listing.append(el("p", { class: "empty" }, "No open incident."));
      for (const incident of incidents) {
        const note = el("textarea", { rows: "2", maxlength: "1000", placeholder: "What was checked, and by whom", class: "incident-note" });
        const clearButton = el("button", { class: "clear-incident" }, "Clear the incident");
        const card = el(
          "div",
          { class: "card", "data-id": incident.id },
          el("h2", {}, `${incident.kind} incident on ${incident.vault}`),
          el("p", {}, incident.detail.reason ?? "No reason recorded."),
          incident.detail.request ? el("p", { class: "sub" }, `Request ${incident.detail.request}`) : null,
          el("p", { class: "sub" }, `Opened ${new Date(incident.openedAt * 1000).toLocaleString()}. Signing on this vault is blocked until it is cleared.`),
          note,
          clearButton,
        );
        clearButton.addEventListener("click", async () => {
          try {
            await api.clearIncident(incident.id, note.value);
            shell.notice(`Incident ${incident.id} cleared.`);
            await load();
          } catch (error) {
            card.append(el("p", { class: "danger" }, sentence(asProblem(error))));
          }
        });
        listing.append(card);
      }
    } catch (error) {
      shell.error(error);
    }
  };
  void load();
  return screen;
}

export function settingsScreen(shell: Shell): HTMLElement {
  const screen = el("section", { class: "screen", id: "screen-settings" }, el("h1", {}, "Settings"));
  const body = el("div", {});
  screen.append(body);
  const load = async () => {
    clear(body);
    try {
      const settings = await api.settings();
      const queue = settings.queue;
      body.append(
        el(
          "section",
          { class: "card", id: "settings-queue" },
          el("h2", {}, "Queue"),
          queue
            ? el("div", {}, el("p", {}, queue.url), ...queue.pins.map((p) => el("p", {}, "Pin ", el("code", {}, p))),
                el("p", { class: "sub" }, `Trusted initiators: ${queue.initiators.join(", ") || "none"}`))
            : el("p", {}, "Not connected."),
        ),
      );
      if (queue) body.append(credentialsForm(shell, queue), securityKeyForm(shell));
      body.append(
        el(
          "section",
          { class: "card", id: "settings-keys" },
          el("h2", {}, "Keys"),
          ...settings.keys.map((k) => el("p", {}, el("code", {}, k.address), ` ${k.kind}${k.label ? ` · ${k.label}` : ""}`)),
        ),
      );
      body.append(
        el(
          "section",
          { class: "card", id: "settings-vaults" },
          el("h2", {}, "Pinned vault records"),
          ...settings.vaults.map((v) =>
            el("p", {}, `${v.label ? `${v.label}: ` : ""}${v.address} on chain ${v.chainId}, Safe ${v.safeVersion}, ${v.threshold ?? "?"} of [${v.owners.join(", ")}]`),
          ),
        ),
      );
      const minutes = el("input", { id: "idle-minutes", type: "number", min: "1", max: "1440", value: String(Math.round(settings.idleLockSeconds / 60)) });
      const save = el("button", { id: "save-idle" }, "Save");
      save.addEventListener("click", async () => {
        try {
          const seconds = await api.setIdleLock(Math.round(Number(minutes.value) * 60));
          shell.notice(`Countersign locks after ${Math.round(seconds / 60)} minute(s) without use.`);
        } catch (error) {
          shell.error(error);
        }
      });
      body.append(
        el(
          "section",
          { class: "card", id: "settings-lock" },
          el("h2", {}, "Lock"),
          el("label", { class: "field" }, el("span", {}, "Lock after this many idle minutes"), minutes),
          save,
          settings.canTrulyLock
            ? el("p", { class: "sub", id: "lock-note" }, "Locking drops the store's key from memory; unlocking asks for the passphrase.")
            : el("p", { class: "warn", id: "lock-note" }, "This store has no passphrase: the system keyring hands its key back without asking, so locking only hides the window. Anyone at this session can unlock it."),
          el("p", { class: "sub" }, `Data folder: ${settings.dataDir}`),
        ),
      );
    } catch (error) {
      shell.error(error);
    }
  };
  void load();
  return screen;
}

/** Registers the approver's FIDO2 security key with the queue; an admin confirms it. */
function securityKeyForm(shell: Shell): HTMLElement {
  const pin = el("input", { id: "register-key-pin", type: "password", autocomplete: "off" });
  const result = el("div", { id: "register-key-result" });
  const register = el("button", { id: "register-key" }, "Register a security key");
  register.addEventListener("click", async () => {
    clear(result);
    register.disabled = true;
    shell.busy("Touch your security key…");
    const keyPin = pin.value || null;
    pin.value = "";
    try {
      const id = await api.registerSecurityKey(keyPin);
      result.append(el("p", { class: "ok", id: "register-key-ok" }, `Registered key ${id}. It counts once your queue's admin confirms it: check the key with them.`));
    } catch (error) {
      result.append(el("p", { class: "danger", id: "register-key-error", "data-code": asProblem(error).code }, sentence(asProblem(error))));
    } finally {
      register.disabled = false;
      shell.busy(null);
    }
  });
  return el(
    "section",
    { class: "card", id: "settings-security-key" },
    el("h2", {}, "Security key (FIDO2)"),
    el("p", { class: "sub" }, "A vault may ask for a touch of your security key next to each approval."),
    el("label", { class: "field" }, el("span", {}, "The key's PIN, if it has one"), pin),
    register,
    result,
  );
}

/** New pins (a rotation), a new API key or other initiators for the same queue. The backend
 * proves them before keeping them, and keeps the synced copy with its marks. */
function credentialsForm(shell: Shell, queue: { url: string; pins: string[]; initiators: string[] }): HTMLElement {
  const pin = el("input", { id: "settings-pin", value: queue.pins[0] ?? "" });
  const pin2 = el("input", { id: "settings-pin-2", value: queue.pins[1] ?? "" });
  const apiKey = el("input", { id: "settings-key", type: "password", autocomplete: "off", placeholder: "the API key (asked again)" });
  const initiators = el("textarea", { id: "settings-initiators", rows: "2" }, queue.initiators.join("\n"));
  const result = el("div", { id: "settings-queue-result" });
  const save = el("button", { id: "save-queue" }, "Check and save");
  save.addEventListener("click", async () => {
    clear(result);
    save.disabled = true;
    shell.busy("Checking the queue with the new pins and key…");
    try {
      const member = await api.connectQueue({
        url: queue.url,
        pins: [pin.value, pin2.value].map((p) => p.trim()).filter((p) => p !== ""),
        apiKey: apiKey.value,
        initiators: initiators.value.split(/\s+/).filter((a) => a !== ""),
      });
      apiKey.value = "";
      result.append(el("p", { class: "ok" }, `Saved: the queue knows you as ${member.id} (${member.role}).`));
    } catch (error) {
      result.append(el("p", { class: "danger", "data-code": asProblem(error).code }, sentence(asProblem(error))));
    } finally {
      save.disabled = false;
      shell.busy(null);
    }
  });
  return el(
    "section",
    { class: "card", id: "settings-credentials" },
    el("h2", {}, "Pins, API key and initiators"),
    el("p", { class: "sub" }, "For a pin rotation give both pins; the synced requests and their marks are kept."),
    el("label", { class: "field" }, el("span", {}, "Pin"), pin),
    el("label", { class: "field" }, el("span", {}, "Second pin"), pin2),
    el("label", { class: "field" }, el("span", {}, "API key"), apiKey),
    el("label", { class: "field" }, el("span", {}, "Initiators you trust"), initiators),
    save,
    result,
  );
}
