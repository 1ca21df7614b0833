import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { dirname, join, normalize, relative } from "node:path";
import { Glob } from "bun";

/**
 * Imports go one way (README, Architecture): each folder of src/ may import only folders below
 * it. Folders of one rank are siblings and import nothing of each other (ingest and pipeline meet
 * only in src/event and src/bus). The node's wiring (src/node.ts, src/node/, src/main.ts) is on top.
 */
const RANK: Record<string, number> = {
  util: 0,
  expr: 1,
  event: 2,
  config: 2,
  bus: 3,
  services: 3,
  sink: 4,
  ingest: 5,
  pipeline: 5,
  debugger: 6,
  ops: 6,
  node: 7,
};
/** The debugger's routes serve /metrics, rendered by ops. */
const ALLOWED = new Set(["debugger→ops"]);

const SRC = join(import.meta.dir, "../../src");
const layerOf = (file: string) => {
  const top = relative(SRC, file).split("/")[0]!;
  return top === "node.ts" || top === "main.ts" ? "node" : top;
};

test("every import in src/ goes down the layers (or stays in its folder)", () => {
  const wrong: string[] = [];
  for (const rel of new Glob("**/*.ts").scanSync(SRC)) {
    const file = join(SRC, rel);
    const from = layerOf(file);
    expect(RANK[from]).toBeDefined();
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^;]*?from\s+"(\.[^"]+)"|import\s+"(\.[^"]+)"/g)) {
      const target = normalize(join(dirname(file), m[1] ?? m[2]!));
      if (!target.startsWith(SRC)) continue;
      const to = layerOf(target);
      if (to === from || ALLOWED.has(`${from}→${to}`)) continue;
      if (RANK[to]! >= RANK[from]!) wrong.push(`${relative(SRC, file)} imports ${to} (${m[1] ?? m[2]})`);
    }
  }
  expect(wrong).toEqual([]);
});
