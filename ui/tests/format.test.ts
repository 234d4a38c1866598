import { describe, expect, it } from "vitest";
import { age, applyFilter, approvals, moveSelection, sentence, short } from "../src/format";
import type { Row } from "../src/ipc";

function row(id: string, extra: Partial<Row> = {}): Row {
  return {
    id,
    state: "pending",
    chainId: 1,
    chain: "Ethereum",
    safe: "0x5aFE3855358E112B5647B952709E6165e1c1eEEe",
    vault: "Treasury",
    nonce: "42",
    operation: "transfer",
    asset: "USDC",
    amount: "250000",
    destination: "0x28C6c06298d514Db089934071355E5743bf21d60",
    destinationLabel: null,
    createdAt: 1_000,
    approvals: 0,
    threshold: 2,
    marked: false,
    approvedBy: [],
    ...extra,
  };
}

describe("format", () => {
  it("says ages in words", () => {
    expect(age(1000, 1030)).toBe("just now");
    expect(age(1000, 1000 + 5 * 60)).toBe("5 min");
    expect(age(1000, 1000 + 3 * 3600)).toBe("3 h");
    expect(age(1000, 1000 + 2 * 86400)).toBe("2 d");
    expect(age(2000, 1000)).toBe("just now");
  });

  it("counts approvals k of n", () => {
    expect(approvals({ approvals: 1, threshold: 2 })).toBe("1 of 2");
    expect(approvals({ approvals: 0, threshold: null })).toBe("0 of ?");
  });

  it("shortens addresses", () => {
    expect(short("0x28C6c06298d514Db089934071355E5743bf21d60")).toBe("0x28C6…1d60");
    expect(short("0x12")).toBe("0x12");
  });

  it("filters by state, marks and text", () => {
    const rows = [
      row("a"),
      row("b", { marked: true }),
      row("c", { state: "approved", asset: "DAI" }),
      row("d", { destinationLabel: "Payroll desk" }),
    ];
    expect(applyFilter(rows, { state: "awaiting", text: "" }).map((r) => r.id)).toEqual(["a", "d"]);
    expect(applyFilter(rows, { state: "marked", text: "" }).map((r) => r.id)).toEqual(["b"]);
    expect(applyFilter(rows, { state: "approved", text: "" }).map((r) => r.id)).toEqual(["c"]);
    expect(applyFilter(rows, { state: "all", text: "dai" }).map((r) => r.id)).toEqual(["c"]);
    expect(applyFilter(rows, { state: "all", text: "payroll" }).map((r) => r.id)).toEqual(["d"]);
  });

  it("moves the selection with the keyboard and stays in bounds", () => {
    expect(moveSelection("ArrowDown", 0, 3, 10)).toBe(1);
    expect(moveSelection("ArrowDown", 2, 3, 10)).toBe(2);
    expect(moveSelection("k", 0, 3, 10)).toBe(0);
    expect(moveSelection("PageDown", 0, 100, 10)).toBe(10);
    expect(moveSelection("End", 0, 100, 10)).toBe(99);
    expect(moveSelection("Home", 50, 100, 10)).toBe(0);
    expect(moveSelection("x", 0, 3, 10)).toBeNull();
    expect(moveSelection("ArrowDown", 0, 0, 10)).toBeNull();
  });

  it("turns problems into sentences", () => {
    expect(sentence({ code: "wrong_pin", message: "x" })).toContain("does not match the pin");
    expect(sentence({ code: "other", message: "reason: is empty" })).toBe("Reason: is empty.");
    expect(sentence({ code: "other", message: "Done." })).toBe("Done.");
  });
});
