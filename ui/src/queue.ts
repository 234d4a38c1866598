// The queue: a virtualized table of the synced requests, with filters and keyboard
// navigation, updated live.
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
} from "@tanstack/virtual-core";
import { api, type Row } from "./ipc";
import { clear, el } from "./dom";
import { age, applyFilter, approvals, moveSelection, short, type Filter } from "./format";
import type { Shell } from "./main";

export const ROW_HEIGHT = 36;
/** Rows asked for first: more than a tall window shows. */
const FIRST_ROWS = 100;

const STATES: [string, string][] = [
  ["awaiting", "Awaiting approval"],
  ["pending", "Pending"],
  ["approved", "Approved"],
  ["executed", "Executed"],
  ["rejected", "Rejected"],
  ["expired", "Expired"],
  ["marked", "Marked"],
  ["all", "All"],
];

const COLUMNS = ["Vault", "Chain", "Operation", "Asset", "Amount", "Destination", "Age", "Approvals", "State"];

/** The filter survives moving between screens. */
const filter: Filter = { state: "awaiting", text: "" };

export function queueScreen(shell: Shell): HTMLElement {
  let rows: Row[] = [];
  let shown: Row[] = [];
  let selected = 0;
  /** The selected request itself: a reload that adds rows above it keeps it selected, so that
   * Enter opens the request the person chose, not whichever moved into its place. */
  let selectedId: string | null = null;

  const stateSelect = el("select", { id: "filter-state", "aria-label": "State" });
  for (const [value, label] of STATES) {
    stateSelect.append(el("option", { value, selected: value === filter.state }, label));
  }
  const search = el("input", {
    id: "filter-text",
    type: "search",
    placeholder: "Filter: vault, asset, destination, id  ( / )",
    "aria-label": "Filter",
    value: filter.text,
  });
  const count = el("span", { class: "count", id: "row-count" });
  const syncButton = el("button", { id: "sync", class: "primary" }, "Sync");
  const header = el(
    "div",
    { class: "row head", role: "row" },
    ...COLUMNS.map((c) => el("span", { role: "columnheader" }, c)),
  );
  const inner = el("div", { class: "inner" });
  const viewport = el(
    "div",
    { class: "viewport", id: "queue-table", tabindex: "0", role: "grid", "aria-label": "Requests" },
    inner,
  );
  const empty = el("p", { class: "empty", id: "queue-empty" });

  const virtualizer = new Virtualizer<HTMLDivElement, HTMLDivElement>({
    count: 0,
    getScrollElement: () => viewport,
    estimateSize: () => ROW_HEIGHT,
    scrollToFn: elementScroll,
    observeElementRect,
    observeElementOffset,
    overscan: 8,
    // The first paint needs no layout pass: start from the window's size.
    initialRect: { width: window.innerWidth, height: window.innerHeight },
    onChange: () => paint(),
  });
  const unmount = virtualizer._didMount();

  function cell(text: string, title?: string): HTMLSpanElement {
    return el("span", { role: "gridcell", title: title ?? text }, text);
  }

  function rowNode(row: Row, index: number, top: number): HTMLDivElement {
    const destination = row.destination
      ? row.destinationLabel
        ? `${row.destinationLabel} (${short(row.destination)})`
        : short(row.destination)
      : "—";
    const classes = ["row"];
    if (index === selected) classes.push("selected");
    if (row.marked) classes.push("marked");
    const node = el(
      "div",
      {
        class: classes.join(" "),
        role: "row",
        "data-id": row.id,
        "aria-selected": index === selected ? "true" : "false",
        onclick: () => {
          selected = index;
          selectedId = row.id;
          shell.go({ name: "detail", id: row.id });
        },
      },
      cell(row.vault ?? short(row.safe), row.safe),
      cell(row.chain),
      cell(row.operation),
      cell(row.asset || "—"),
      cell(row.amount || "—"),
      cell(destination, row.destination ?? ""),
      cell(age(row.createdAt, Math.floor(Date.now() / 1000))),
      cell(approvals(row)),
      cell(row.marked ? `${row.state} · MARKED` : row.state),
    );
    // Through the CSSOM: the CSP refuses style attributes.
    node.style.transform = `translateY(${top}px)`;
    return node;
  }

  function paint(): void {
    inner.style.height = `${virtualizer.getTotalSize()}px`;
    clear(inner);
    for (const item of virtualizer.getVirtualItems()) {
      const row = shown[item.index];
      if (row) inner.append(rowNode(row, item.index, item.start));
    }
  }

  function refilter(): void {
    filter.state = stateSelect.value;
    filter.text = search.value;
    shown = applyFilter(rows, filter);
    const kept = selectedId === null ? -1 : shown.findIndex((row) => row.id === selectedId);
    selected = kept >= 0 ? kept : Math.min(selected, Math.max(0, shown.length - 1));
    selectedId = shown[selected]?.id ?? null;
    count.textContent = `${shown.length} of ${rows.length} requests`;
    empty.textContent =
      rows.length === 0
        ? "No synced requests yet. Sync to fetch the queue."
        : shown.length === 0
          ? "No request matches the filter."
          : "";
    virtualizer.setOptions({ ...virtualizer.options, count: shown.length });
    virtualizer._willUpdate();
    virtualizer.measure();
    paint();
  }

  async function load(): Promise<void> {
    // Marks for the performance benchmark (standard User Timing, read through WebDriver).
    performance.mark("queue-requested");
    try {
      // The newest rows first, a screenful and more, while the backend reads the rest. If they
      // cannot be read, every row is asked for all the same, and its answer (or error) counts.
      if (rows.length === 0) {
        const newest = await api.rows(FIRST_ROWS).catch(() => null);
        if (newest !== null && rows.length === 0) {
          rows = newest;
          performance.mark("queue-received");
          refilter();
          count.textContent = `${shown.length} of the newest ${rows.length} requests; reading the rest…`;
          // Painted before the rest is asked for: parsing every row would hold the frame.
          await new Promise((painted) => requestAnimationFrame(() => requestAnimationFrame(painted)));
          performance.mark("queue-painted");
        }
      }
      rows = await api.rows();
      performance.mark("queue-complete");
      refilter();
    } catch (error) {
      // Never a partial list that looks whole: the table is emptied and the error said.
      rows = [];
      refilter();
      count.textContent = "The synced requests could not be read.";
      shell.error(error);
    }
  }

  async function sync(): Promise<void> {
    syncButton.disabled = true;
    shell.busy("Syncing with the queue…");
    try {
      const summary = await api.sync();
      const parts = [`Synced ${summary.fetched} change(s).`];
      if (summary.marked.length > 0) parts.push(`${summary.marked.length} request(s) marked: they cannot be signed.`);
      if (summary.incidents.length > 0) parts.push(`${summary.incidents.length} incident(s) opened.`);
      if (summary.vaultDifferences.length > 0) parts.push("The queue's vault records differ from yours: see Settings.");
      if (summary.more) parts.push("The queue has more changes: sync again.");
      shell.notice(parts.join(" "));
      await load();
    } catch (error) {
      shell.error(error);
    } finally {
      syncButton.disabled = false;
      shell.busy(null);
    }
  }

  stateSelect.addEventListener("change", refilter);
  search.addEventListener("input", refilter);
  syncButton.addEventListener("click", () => void sync());
  viewport.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      const row = shown[selected];
      if (row) shell.go({ name: "detail", id: row.id });
      event.preventDefault();
      return;
    }
    const page = Math.max(1, Math.floor(viewport.clientHeight / ROW_HEIGHT) - 1);
    const next = moveSelection(event.key, selected, shown.length, page);
    if (next === null) return;
    event.preventDefault();
    selected = next;
    selectedId = shown[next]?.id ?? null;
    virtualizer.scrollToIndex(selected, { align: "auto" });
    paint();
  });
  const screen = el(
    "section",
    { class: "screen queue", id: "screen-queue" },
    el("div", { class: "toolbar" }, stateSelect, search, count, syncButton),
    header,
    viewport,
    empty,
  );
  screen.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== search) {
      search.focus();
      event.preventDefault();
    }
  });
  shell.onQueueChanged(() => void load());
  // Detached when the screen goes: stop observing the viewport.
  const observer = new MutationObserver(() => {
    if (!screen.isConnected) {
      unmount();
      observer.disconnect();
    }
  });
  queueMicrotask(() => {
    if (screen.parentElement) observer.observe(screen.parentElement, { childList: true });
    virtualizer._willUpdate();
    viewport.focus();
  });
  void load();
  return screen;
}
