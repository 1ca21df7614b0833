// `bun bench/rounds.ts N bench/<script>.ts [args...]`: runs a benchmark N times in a row (the same
// environment each time) and prints the range of each figure over the runs, so a range quoted in
// the README comes from one command rather than from runs collected by hand. The script must end
// its output with one JSON line (bench/capacity.ts and bench/e2e.ts do); numeric fields are
// compared, and arrays of objects with a `name` (capacity's components) are keyed by that name.
// Each run's own report goes to stderr as it runs; the range table goes to stdout.
//
//   CAPACITY_REPLICAS=3 bun bench/rounds.ts 3 bench/capacity.ts
//   bun bench/rounds.ts 5 bench/e2e.ts
import { resolve } from "node:path";

const [nArg, script, ...args] = process.argv.slice(2);
const N = Number(nArg);
if (!Number.isInteger(N) || N < 1 || !script) {
  console.error("usage: bun bench/rounds.ts N bench/<script>.ts [args...]");
  process.exit(2);
}

/** Numeric leaves of a JSON value, by dotted path. */
function numbers(v: unknown, path = "", out = new Map<string, number>()): Map<string, number> {
  if (typeof v === "number" && Number.isFinite(v)) out.set(path, v);
  else if (Array.isArray(v)) v.forEach((x, i) => numbers(x, `${path}.${(x as { name?: unknown })?.name ?? i}`, out));
  else if (v && typeof v === "object")
    for (const [k, x] of Object.entries(v)) numbers(x, path ? `${path}.${k}` : k, out);
  return out;
}

const runs: Map<string, number>[] = [];
const failed: string[] = [];
for (let i = 1; i <= N; i++) {
  console.error(
    `\n=== run ${i} of ${N}: bun ${script} ${args.join(" ")} (load average ${(await Bun.file("/proc/loadavg").text()).split(" ").slice(0, 3).join(" ")})`,
  );
  const p = Bun.spawn([process.execPath, resolve(script), ...args], {
    stdout: "pipe",
    stderr: "inherit",
    env: process.env,
  });
  const text = await new Response(p.stdout).text();
  const code = await p.exited;
  process.stderr.write(text);
  const last = text
    .trim()
    .split("\n")
    .reverse()
    .find((l) => l.startsWith("{"));
  let parsed: unknown;
  try {
    parsed = last ? JSON.parse(last) : undefined;
  } catch {}
  if (code !== 0 || parsed === undefined)
    failed.push(`run ${i}: exit ${code}${parsed === undefined ? ", no JSON line" : ""}`);
  if (parsed !== undefined) runs.push(numbers(parsed));
}

const fmt = (x: number) =>
  Math.abs(x) >= 100 ? Math.round(x).toLocaleString("en-US") : x.toLocaleString("en-US", { maximumFractionDigits: 2 });
console.log(
  `\n${script}: ${runs.length} of ${N} runs gave figures${failed.length ? ` (${failed.join("; ")})` : ""}.\n`,
);
console.log(`| figure | min | max | ${runs.map((_, i) => `run ${i + 1}`).join(" | ")} |`);
console.log(`| --- | ---: | ---: | ${runs.map(() => "---:").join(" | ")} |`);
const keys = [...new Set(runs.flatMap((r) => [...r.keys()]))];
for (const k of keys) {
  const xs = runs.map((r) => r.get(k));
  const have = xs.filter((x): x is number => x !== undefined);
  console.log(
    `| ${k} | ${fmt(Math.min(...have))} | ${fmt(Math.max(...have))} | ${xs.map((x) => (x === undefined ? "–" : fmt(x))).join(" | ")} |`,
  );
}
process.exit(failed.length ? 1 : 0);
