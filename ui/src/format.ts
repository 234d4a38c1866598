// Pure helpers for what the screens show; unit-tested without a window.
import type { Row } from "./ipc";

/** How long ago, in words: "just now", "5 min", "3 h", "2 d". */
export function age(createdAt: number, now: number): string {
  const seconds = Math.max(0, now - createdAt);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

/** "1 of 2", or "1 of ?" when the threshold is not pinned. */
export function approvals(row: Pick<Row, "approvals" | "threshold">): string {
  return `${row.approvals} of ${row.threshold ?? "?"}`;
}

/** 0x1234…abcd */
export function short(address: string): string {
  return address.length > 14 ? `${address.slice(0, 6)}…${address.slice(-4)}` : address;
}

export interface Filter {
  state: string;
  text: string;
}

/** The rows a filter keeps: by state ("all", "awaiting" = pending and not marked, or a state)
 * and by text over vault, operation, asset, destination and id. */
export function applyFilter(rows: readonly Row[], filter: Filter): Row[] {
  const text = filter.text.trim().toLowerCase();
  return rows.filter((row) => {
    if (filter.state === "awaiting") {
      if (row.state !== "pending" || row.marked) return false;
    } else if (filter.state === "marked") {
      if (!row.marked) return false;
    } else if (filter.state !== "all" && row.state !== filter.state) {
      return false;
    }
    if (text === "") return true;
    return [row.id, row.vault ?? "", row.safe, row.operation, row.asset, row.destination ?? "", row.destinationLabel ?? ""]
      .some((field) => field.toLowerCase().includes(text));
  });
}

/** The selection after a key press in a list of `count` rows, or null if the key is not ours. */
export function moveSelection(key: string, current: number, count: number, page: number): number | null {
  if (count === 0) return null;
  switch (key) {
    case "ArrowDown":
    case "j":
      return Math.min(count - 1, current + 1);
    case "ArrowUp":
    case "k":
      return Math.max(0, current - 1);
    case "PageDown":
      return Math.min(count - 1, current + page);
    case "PageUp":
      return Math.max(0, current - page);
    case "Home":
      return 0;
    case "End":
      return count - 1;
    default:
      return null;
  }
}

/** A problem as a sentence a person can act on. */
export function sentence(problem: { code: string; message: string }): string {
  switch (problem.code) {
    case "wrong_pin":
      return "The queue's TLS key does not match the pin. Either the pin was copied wrongly, or something other than your queue answered at that address. Nothing was sent. Check the pin with your queue's administrator.";
    case "queue_unreachable":
      return `The queue could not be reached. Check the address and that the queue is running. (${problem.message})`;
    case "locked":
      return "Countersign is locked. Unlock it to go on.";
    case "wrong_passphrase":
      return "That passphrase does not open this store. Try again.";
    default: {
      const message = problem.message.trim();
      const first = message.charAt(0).toUpperCase() + message.slice(1);
      return /[.!?]$/.test(first) ? first : `${first}.`;
    }
  }
}
