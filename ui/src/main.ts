// The Countersign window: onboarding, the queue, a request, incidents, settings, the lock.
// Every decision (what a request does, whether it may be signed) comes from the backend;
// this file only shows it and asks.
import { api, asProblem, on, type Detail, type Status } from "./ipc";
import { clear, el } from "./dom";
import { sentence } from "./format";
import { queueScreen } from "./queue";
import { detailScreen } from "./detail";
import { incidentsScreen, settingsScreen } from "./admin";
import { lockScreen, onboardingScreen } from "./onboarding";

export type Route =
  | { name: "onboarding" }
  | { name: "lock" }
  | { name: "queue" }
  | { name: "detail"; id: string }
  | { name: "incidents" }
  | { name: "settings" };

/** What every screen may use: go elsewhere, show progress or an error, the app status. */
export interface Shell {
  go(route: Route): void;
  status(): Status;
  refreshStatus(): Promise<Status>;
  busy(text: string | null): void;
  error(error: unknown): void;
  notice(text: string): void;
  /** Called when the queue changed (a live event or a sync). */
  onQueueChanged(handler: (() => void) | null): void;
  onStep(handler: ((payload: { id: string; step: string }) => void) | null): void;
}

const root = document.getElementById("app") as HTMLDivElement;
let current: Status = { store: "none", protection: null, queue: null, keys: [], signer: null };
let route: Route = { name: "onboarding" };
let queueHandler: (() => void) | null = null;
let stepHandler: ((payload: { id: string; step: string }) => void) | null = null;

const nav = el("nav", { class: "nav", "aria-label": "Screens" });
const main = el("main", { id: "main" });
const bar = el("footer", { class: "bar" });
const busyText = el("span", { class: "busy", id: "busy" });
const liveText = el("span", { class: "live", id: "live" }, "live updates: off");
const message = el("div", { class: "message", role: "alert", id: "message" });
bar.append(busyText, liveText);
root.append(nav, message, main, bar);

const shell: Shell = {
  go,
  status: () => current,
  refreshStatus: async () => {
    current = await api.status();
    renderNav();
    return current;
  },
  busy(text) {
    busyText.textContent = text ?? "";
    busyText.classList.toggle("on", text !== null);
  },
  error(error) {
    const problem = asProblem(error);
    message.className = "message error";
    message.dataset.code = problem.code;
    message.textContent = sentence(problem);
  },
  notice(text) {
    message.className = "message notice";
    delete message.dataset.code;
    message.textContent = text;
  },
  onQueueChanged(handler) {
    queueHandler = handler;
  },
  onStep(handler) {
    stepHandler = handler;
  },
};

function setUp(status: Status): boolean {
  return status.store === "unlocked" && status.keys.length > 0 && status.queue !== null;
}

function renderNav(): void {
  clear(nav);
  if (!setUp(current)) return;
  const link = (name: Route["name"], label: string) =>
    el(
      "button",
      {
        class: route.name === name || (name === "queue" && route.name === "detail") ? "tab active" : "tab",
        id: `nav-${name}`,
        onclick: () => go({ name } as Route),
      },
      label,
    );
  nav.append(
    el("span", { class: "brand" }, "Countersign"),
    link("queue", "Queue"),
    link("incidents", "Incidents"),
    link("settings", "Settings"),
    el(
      "button",
      {
        class: "tab lock",
        id: "nav-lock",
        onclick: async () => {
          await api.lock();
          await shell.refreshStatus();
          go({ name: "lock" });
        },
      },
      "Lock",
    ),
  );
}

function go(next: Route): void {
  route = next;
  queueHandler = null;
  stepHandler = null;
  message.className = "message";
  message.textContent = "";
  renderNav();
  clear(main);
  const screen = (() => {
    switch (next.name) {
      case "onboarding":
        return onboardingScreen(shell);
      case "lock":
        return lockScreen(shell);
      case "queue":
        return queueScreen(shell);
      case "detail":
        return detailScreen(shell, next.id);
      case "incidents":
        return incidentsScreen(shell);
      case "settings":
        return settingsScreen(shell);
    }
  })();
  main.append(screen);
}

function firstRoute(status: Status): Route {
  if (status.store === "locked") return { name: "lock" };
  if (!setUp(status)) return { name: "onboarding" };
  return { name: "queue" };
}

/** What the person does restarts the idle lock (at most every 10 s); redraws do not. */
let lastActive = 0;
function active(): void {
  const now = Date.now();
  if (now - lastActive < 10_000 || current.store !== "unlocked") return;
  lastActive = now;
  void api.active().catch(() => undefined);
}
for (const kind of ["keydown", "pointerdown", "wheel"]) {
  document.addEventListener(kind, active, { passive: true, capture: true });
}

async function start(): Promise<void> {
  await on<null>("locked", async () => {
    await shell.refreshStatus();
    go({ name: "lock" });
    shell.notice("Countersign locked itself after the idle time.");
  });
  await on<unknown>("queue-changed", () => queueHandler?.());
  await on<{ id: string; step: string }>("approval-step", (payload) => stepHandler?.(payload));
  await on<{ connected: boolean; error?: unknown }>("live", (payload) => {
    liveText.textContent = payload.connected ? "live updates: on" : "live updates: reconnecting";
    liveText.classList.toggle("on", payload.connected);
  });
  try {
    current = await api.status();
  } catch (error) {
    shell.error(error);
  }
  go(firstRoute(current));
}

export type { Detail };
void start();
