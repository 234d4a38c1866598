// The queue: a virtualized table of the synced requests, with filters and keyboard
// navigation, updated live.
import {
  Virtualizer,
  elementScroll,
  observeElementOffset,
  observeElementRect,
} from "@tanstack/virtual-core";
import { api, type Row } from "./ipc";
import { el } from "./dom";
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

  /** What a row shows, cell by cell (text, title). */
  function cells(row: Row): [string, string][] {
    const destination = row.destination
      ? row.destinationLabel
        ? `${row.destinationLabel} (${short(row.destination)})`
        : short(row.destination)
      : "—";
    const text = (t: string): [string, string] => [t, t];
    return [
      [row.vault ?? short(row.safe), row.safe],
      text(row.chain),
      text(row.operation),
      text(row.asset || "—"),
      text(row.amount || "—"),
      [destination, row.destination ?? ""],
      text(age(row.createdAt, Math.floor(Date.now() / 1000))),
      text(approvals(row)),
      text(row.marked ? `${row.state} · MARKED` : row.state),
    ];
  }

  function rowNode(row: Row, shows: [string, string][], isSelected: boolean): HTMLDivElement {
    const classes = ["row"];
    if (isSelected) classes.push("selected");
    if (row.marked) classes.push("marked");
    return el(
      "div",
      {
        class: classes.join(" "),
        role: "row",
        "data-id": row.id,
        "aria-selected": isSelected ? "true" : "false",
        onclick: () => {
          // Where the request is now: the node may have outlived a reload that moved it.
          selected = Math.max(0, shown.findIndex((r) => r.id === row.id));
          selectedId = row.id;
          shell.go({ name: "detail", id: row.id });
        },
      },
      ...shows.map(([text, title]) => cell(text, title)),
    );
  }

  /** The rows drawn last, by request id, with what each showed. A row that shows the same
   * is kept, not drawn anew: a press and release on it stay one click even when a reload or
   * a scroll repaints the table in between. */
  let drawn = new Map<string, { node: HTMLDivElement; key: string }>();

  function paint(): void {
    inner.style.height = `${virtualizer.getTotalSize()}px`;
    const next = new Map<string, { node: HTMLDivElement; key: string }>();
    const nodes: HTMLDivElement[] = [];
    for (const item of virtualizer.getVirtualItems()) {
      const row = shown[item.index];
      if (!row) continue;
      const shows = cells(row);
      const isSelected = item.index === selected;
      // The cells say whether it is marked; the class follows from them.
      const key = JSON.stringify([shows, isSelected]);
      const before = drawn.get(row.id);
      const node = before !== undefined && before.key === key ? before.node : rowNode(row, shows, isSelected);
      // Through the CSSOM: the CSP refuses style attributes.
      node.style.transform = `translateY(${item.start}px)`;
      next.set(row.id, { node, key });
      nodes.push(node);
    }
    drawn = next;
    // Nodes kept stay where they are; only those gone or new are taken out or put in.
    const staying = new Set<Element>(nodes);
    for (const child of Array.from(inner.children)) {
      if (!staying.has(child)) child.remove();
    }
    nodes.forEach((node, i) => {
      if (inner.children[i] !== node) inner.insertBefore(node, inner.children[i] ?? null);
    });
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

  /** Whether the pointer is over the table: a row that moved then could take a click. */
  let pointerInside = false;
  viewport.addEventListener("pointerenter", () => (pointerInside = true));
  viewport.addEventListener("pointerleave", () => (pointerInside = false));

  /** The request at the top of the view and how far into its row, when the rows must stay
   * put through a reload: the person has scrolled, or has the pointer over the table. */
  function anchorNow(): { id: string; offset: number } | null {
    const top = viewport.scrollTop;
    if (!pointerInside && top <= 0) return null;
    const index = Math.floor(top / ROW_HEIGHT);
    const row = shown[index];
    return row ? { id: row.id, offset: top - index * ROW_HEIGHT } : null;
  }

  /** Scrolls so that the anchored request is where it was: rows added above it (a live
   * update) do not move the rows under the pointer; the count says how many there are. */
  function keep(anchor: { id: string; offset: number } | null): void {
    if (anchor === null) return;
    const index = shown.findIndex((row) => row.id === anchor.id);
    if (index < 0) return;
    const offset = index * ROW_HEIGHT + anchor.offset;
    // Set at once, before the frame is drawn; the table follows on the scroll event.
    if (offset !== viewport.scrollTop) viewport.scrollTop = offset;
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
      const all = await api.rows();
      const anchor = anchorNow();
      rows = all;
      performance.mark("queue-complete");
      refilter();
      keep(anchor);
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
