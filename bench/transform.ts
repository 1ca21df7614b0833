/**
 * npm run bench:transform — events/s per transformation kind over the fixture identify events.
 *
 * Targets: compiled mapping ≥ 30× `jsonata` evaluate; JavaScript ≥ 5× less CPU per event than calling
 * `evalCode` once per event in a fresh string (the naive way, in the same run). JavaScript and Python
 * run as the node runs them, in a sandbox process (src/pipeline/transform/sandbox-process.ts), and
 * also in the in-process Worker hosts they ran in before (kept here as the baseline): neither may lose
 * more than 20 % of its events/s to the process layer, and JavaScript's CPU per event stays within
 * 20 % of before. CPU counts every thread of this process and of its child processes (the sandbox).
 *
 *  - mapping: 5 properties, `compileJsonata` (src/expr/index.ts) vs the `jsonata` package,
 *    each property's expression parsed once, then `await expr.evaluate(event)` per property per event.
 *  - javascript: createJavaScriptTransform, batches of `batchSize` events, vs one QuickJS context
 *    evaluating `(<source>)(<event JSON>)` per event and dumping the result.
 *  - python: createPythonTransform (src/pipeline/transform/python.ts), same batches.
 * Modules written elsewhere are imported dynamically: a missing one skips its section.
 *
 * Env: BENCH_EVENTS (default 2000 distinct events), BENCH_MS (default 1500 ms per measurement), BENCH_BATCH (500).
 */
import jsonata from "jsonata";
import { newQuickJSWASMModule, RELEASE_SYNC } from "quickjs-emscripten";
import fixture from "../test/fixtures/segment-identify.json" with { type: "json" };
import { readdirSync, readFileSync } from "node:fs";
import { createJavaScriptTransform } from "../src/pipeline/transform/javascript.ts";
import { createTransform } from "../src/pipeline/transform/index.ts";
import type { SandboxedTransform } from "../src/pipeline/transform/types.ts";
import { parseCommand } from "../scripts/cli.ts";

// Before anything starts: `--help` prints this and exits, an unknown flag exits 2.
parseCommand({
  name: "bench:transform",
  options: {},
  usage: `usage: npm run bench:transform

Events/s per transformation kind (compiled mapping, JavaScript, Python) over the fixture identify
events, each against its baseline in the same run, with PASS/FAIL per target.

  -h, --help   this help

Environment: BENCH_EVENTS (2000 distinct events), BENCH_MS (1500 ms per measurement), BENCH_BATCH (500).`,
});

const eventCount = Number(process.env.BENCH_EVENTS ?? 2000);
const measureMs = Number(process.env.BENCH_MS ?? 1500);
const batchSize = Number(process.env.BENCH_BATCH ?? 500);

// Distinct events (different ids/emails) so nothing can be cached per input.
const events = Array.from({ length: eventCount }, (_, i) => ({
  ...fixture,
  messageId: `${fixture.messageId.slice(0, -6)}${String(i).padStart(6, "0")}`,
  userId: String(703991475 + i),
  traits: { ...fixture.traits, email: `Emily.Johnson+${i}@Example.com`, plan: i % 3 ? "Enterprise" : "Pro" },
}));

const mapping: Record<string, string> = {
  email: "$lowercase(traits.email)",
  plan: "traits.plan",
  company: "traits.company",
  job_title: "traits.jobTitle",
  country: "traits.country",
};
const jsSource = `function transform(event) {
  const t = event.traits;
  return { email: t.email.toLowerCase(), plan: t.plan, company: t.company, job_title: t.jobTitle, country: t.country };
}`;
const pySource = `def transform(event):
    t = event["traits"]
    return {"email": t["email"].lower(), "plan": t["plan"], "company": t["company"], "job_title": t["jobTitle"], "country": t["country"]}
`;

interface Speed {
  /** events per second, wall clock */
  eps: number;
  /** process CPU time (all threads) per event, in µs */
  cpuUs: number;
}

/** CPU µs used so far by this process and every process descended from it (a sandbox's bwrap, Bun). */
function treeCpuMicros(): number {
  const own = process.cpuUsage();
  const tick = 1e6 / 100; // USER_HZ
  const parent = new Map<number, number>();
  const ticks = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      parent.set(Number(name), Number(f[1]));
      ticks.set(Number(name), Number(f[11]) + Number(f[12]));
    } catch {
      /* exited */
    }
  }
  let children = 0;
  for (const [pid, t] of ticks) {
    for (let p = parent.get(pid); p !== undefined && p > 1; p = parent.get(p)) {
      if (p === process.pid) {
        children += t;
        break;
      }
    }
  }
  return own.user + own.system + children * tick;
}

/** Run `round` (which processes `perRound` events) repeatedly for about measureMs after a warm-up. */
async function measure(perRound: number, round: () => unknown | Promise<unknown>): Promise<Speed> {
  const warmUntil = performance.now() + Math.min(300, measureMs / 4);
  do await round();
  while (performance.now() < warmUntil);
  let n = 0;
  const cpu0 = treeCpuMicros();
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < measureMs) {
    await round();
    n += perRound;
    t = performance.now();
  }
  return { eps: (n / (t - t0)) * 1000, cpuUs: (treeCpuMicros() - cpu0) / n };
}

const batches = (xs: unknown[]) =>
  Array.from({ length: Math.ceil(xs.length / batchSize) }, (_, i) => xs.slice(i * batchSize, (i + 1) * batchSize));

async function tryImport(rel: string): Promise<Record<string, unknown> | undefined> {
  const url = new URL(rel, import.meta.url);
  if (!(await Bun.file(url).exists())) return undefined;
  return (await import(url.href)) as Record<string, unknown>;
}

type Row = { kind: string; speed: Speed | undefined; vs: string; target: string; result: string };
const rows: Row[] = [];
const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
const line = (label: string, x: Speed, extra = "") =>
  console.log(
    `${label.padEnd(42)} ${fmt(x.eps).padStart(11)} events/s  ${x.cpuUs.toFixed(2).padStart(8)} CPU µs/event${extra}`,
  );
const check = (label: string, a: unknown, b: unknown) => {
  if (JSON.stringify(a) !== JSON.stringify(b))
    throw new Error(`${label}: outputs differ\n${JSON.stringify(a)}\n${JSON.stringify(b)}`);
};

console.log(
  `transform bench: ${eventCount} distinct identify events, ~${measureMs} ms per measurement, batches of ${batchSize}`,
);
console.log(`(CPU µs/event counts all threads of this process and of its children: the sandbox process)\n`);

// ---- mapping ------------------------------------------------------------------------------------
{
  let compileJsonata: ((expr: string) => { evaluate(input: unknown, bindings?: unknown): unknown }) | undefined;
  try {
    compileJsonata = (
      (await tryImport("../src/expr/index.ts")) ?? (await tryImport("../src/pipeline/jsonata/index.ts"))
    )?.compileJsonata as typeof compileJsonata;
  } catch (e) {
    console.log(`mapping: compiler failed to import: ${(e as Error).message}`);
  }
  const interpreted = Object.entries(mapping).map(([k, e]) => [k, jsonata(e)] as const);
  const viaJsonata = async (ev: unknown) => {
    const out: Record<string, unknown> = {};
    for (const [k, e] of interpreted) out[k] = await e.evaluate(ev);
    return out;
  };
  const base = await measure(events.length, async () => {
    for (const ev of events) await viaJsonata(ev);
  });
  line("mapping: jsonata evaluate (5 properties)", base);
  if (!compileJsonata) {
    console.log("mapping: compiled — skipped (compiler not present)");
    rows.push({
      kind: "mapping (compiled)",
      speed: undefined,
      vs: "—",
      target: "≥ 30× jsonata",
      result: "skipped (compiler not present)",
    });
  } else {
    const compiled = Object.entries(mapping).map(([k, e]) => [k, compileJsonata!(e)] as const);
    const viaCompiled = (ev: unknown) => {
      const out: Record<string, unknown> = {};
      for (const [k, e] of compiled) out[k] = e.evaluate(ev);
      return out;
    };
    check("mapping", viaCompiled(events[7]), await viaJsonata(events[7]));
    const speed = await measure(events.length, () => {
      for (const ev of events) viaCompiled(ev);
    });
    const ratio = speed.eps / base.eps;
    line("mapping: compiled", speed, `  (${ratio.toFixed(1)}×)`);
    rows.push({
      kind: "mapping (compiled)",
      speed,
      vs: `${ratio.toFixed(1)}× jsonata (${fmt(base.eps)}/s)`,
      target: "≥ 30×",
      result: ratio >= 30 ? "PASS" : "FAIL",
    });
  }
}

// ---- javascript ---------------------------------------------------------------------------------
let jsSpeed: Speed | undefined;
{
  // Naive: a fresh code string per event, evaluated in one long-lived context.
  const mod = await newQuickJSWASMModule(RELEASE_SYNC);
  const rt = mod.newRuntime();
  rt.setMemoryLimit(64 * 1024 * 1024);
  const vm = rt.newContext();
  const naive = (ev: unknown) => {
    const h = vm.unwrapResult(vm.evalCode(`(${jsSource})(${JSON.stringify(ev)})`));
    const v = vm.dump(h) as unknown;
    h.dispose();
    return v;
  };
  const before = await createJavaScriptTransform(jsSource); // the in-process Worker host: baseline only
  const after = await createTransform({ javascript: jsSource }); // as the node runs it: a sandbox process
  for (const t of [before, after])
    check("javascript", (await t.transformBatch([events[7]]))[0], { ok: true, value: naive(events[7]) });
  const parts = batches(events);
  const run = (t: SandboxedTransform) => async () => {
    for (const p of parts) await t.transformBatch(p);
  };
  // Interleaved, best of three each, so a busy machine skews all alike.
  const best = (a: Speed | undefined, b: Speed) => (!a || b.cpuUs < a.cpuUs ? b : a);
  let base: Speed | undefined;
  let old: Speed | undefined;
  let speed: Speed | undefined;
  for (let k = 0; k < 3; k++) {
    base = best(
      base,
      await measure(events.length, () => {
        for (const ev of events) naive(ev);
      }),
    );
    old = best(old, await measure(events.length, run(before)));
    speed = best(speed, await measure(events.length, run(after)));
  }
  const single = await measure(200, async () => {
    for (let i = 0; i < 200; i++) await after.transformBatch([events[i]]);
  });
  before.dispose();
  after.dispose();
  vm.dispose();
  rt.dispose();
  jsSpeed = speed!;
  const cpuRatio = base!.cpuUs / speed!.cpuUs;
  const cpuGrowth = speed!.cpuUs / old!.cpuUs - 1;
  const epsLoss = 1 - speed!.eps / old!.eps;
  line("javascript: naive evalCode per event", base!);
  line(`javascript: in-process worker (before), ${batchSize}`, old!);
  line(`javascript: sandbox process (after), ${batchSize}`, speed!, `  (${cpuRatio.toFixed(1)}× less CPU than naive)`);
  line("javascript: sandbox process, batches of 1", single, "  (a round trip to the process per event)");
  rows.push({
    kind: `javascript vs naive (CPU/event)`,
    speed: speed!,
    vs: `${cpuRatio.toFixed(1)}× less CPU than evalCode (${base!.cpuUs.toFixed(2)} µs)`,
    target: "≥ 5×",
    result: cpuRatio >= 5 ? "PASS" : "FAIL",
  });
  rows.push({
    kind: "javascript after vs before (CPU/event)",
    speed: speed!,
    vs: `${(cpuGrowth * 100).toFixed(0)} % (before ${old!.cpuUs.toFixed(2)} µs)`,
    target: "≤ +20 %",
    result: cpuGrowth <= 0.2 ? "PASS" : "FAIL",
  });
  rows.push({
    kind: "javascript after vs before (events/s)",
    speed: speed!,
    vs: `${(-epsLoss * 100).toFixed(0)} % (before ${fmt(old!.eps)}/s)`,
    target: "≥ −20 %",
    result: epsLoss <= 0.2 ? "PASS" : "FAIL",
  });
}

// ---- python -------------------------------------------------------------------------------------
{
  let createPythonTransform: ((source: string) => Promise<SandboxedTransform>) | undefined;
  try {
    createPythonTransform = (await tryImport("../src/pipeline/transform/python.ts"))
      ?.createPythonTransform as typeof createPythonTransform;
  } catch (e) {
    console.log(`python: failed to import: ${(e as Error).message}`);
  }
  if (!createPythonTransform) {
    console.log("python: skipped (python.ts not present)");
    rows.push({ kind: "python", speed: undefined, vs: "—", target: "measured", result: "skipped (not present)" });
  } else {
    const before = await createPythonTransform(pySource); // the in-process Worker host: baseline only
    const after = await createTransform({ python: pySource });
    for (const t of [before, after]) {
      const [r] = await t.transformBatch([events[7]]);
      if (!r?.ok) throw new Error(`python transform failed: ${JSON.stringify(r)}`);
    }
    const parts = batches(events);
    const run = (t: SandboxedTransform) => async () => {
      for (const p of parts) await t.transformBatch(p);
    };
    let old: Speed | undefined;
    let speed: Speed | undefined;
    for (let k = 0; k < 3; k++) {
      const o = await measure(events.length, run(before));
      const s = await measure(events.length, run(after));
      if (!old || o.eps > old.eps) old = o;
      if (!speed || s.eps > speed.eps) speed = s;
    }
    before.dispose();
    after.dispose();
    const epsLoss = 1 - speed!.eps / old!.eps;
    line(`python: in-process worker (before), ${batchSize}`, old!);
    line(`python: sandbox process (after), ${batchSize}`, speed!);
    rows.push({
      kind: "python after vs before (events/s)",
      speed: speed!,
      vs: `${(-epsLoss * 100).toFixed(0)} % (before ${fmt(old!.eps)}/s, ${old!.cpuUs.toFixed(2)} µs)`,
      target: "≥ −20 %",
      result: epsLoss <= 0.2 ? "PASS" : "FAIL",
    });
  }
}

console.log("\n| kind | events/s | CPU µs/event | vs baseline | target | result |\n|---|---:|---:|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.kind} | ${r.speed ? fmt(r.speed.eps) : "—"} | ${r.speed ? r.speed.cpuUs.toFixed(2) : "—"} | ${r.vs} | ${r.target} | ${r.result} |`,
  );
}
// One JSON line last, for bench/rounds.ts (ranges over N runs).
console.log(
  JSON.stringify({
    rows: rows.map((r) => ({
      name: r.kind,
      eps: r.speed?.eps,
      cpuUs: r.speed?.cpuUs,
      pass: r.result === "PASS" ? 1 : 0,
    })),
  }),
);
process.exit(rows.some((r) => r.result === "FAIL") ? 1 : 0);
