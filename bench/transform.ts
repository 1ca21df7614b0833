/**
 * bun run bench:transform — events/s per transformation kind over the fixture identify events.
 *
 * Targets (issue): compiled mapping ≥ 30× `jsonata` evaluate; JavaScript ≥ 5× faster per event than
 * calling `evalCode` once per event in a fresh string (the naive way, in the same run); Python measured.
 *
 *  - mapping: 5 properties, `compileJsonata` (src/pipeline/jsonata/index.ts) vs the `jsonata` package,
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
import { createJavaScriptTransform } from "../src/pipeline/transform/javascript.ts";
import type { SandboxedTransform } from "../src/pipeline/transform/types.ts";

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

/** Run `round` (which processes `perRound` events) repeatedly for about measureMs after a warm-up. */
async function measure(perRound: number, round: () => unknown | Promise<unknown>): Promise<Speed> {
  const warmUntil = performance.now() + Math.min(300, measureMs / 4);
  do await round();
  while (performance.now() < warmUntil);
  let n = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < measureMs) {
    await round();
    n += perRound;
    t = performance.now();
  }
  const cpu = process.cpuUsage(cpu0);
  return { eps: (n / (t - t0)) * 1000, cpuUs: (cpu.user + cpu.system) / n };
}

const batches = (xs: unknown[]) => Array.from({ length: Math.ceil(xs.length / batchSize) }, (_, i) => xs.slice(i * batchSize, (i + 1) * batchSize));

async function tryImport(rel: string): Promise<Record<string, unknown> | undefined> {
  const url = new URL(rel, import.meta.url);
  if (!(await Bun.file(url).exists())) return undefined;
  return (await import(url.href)) as Record<string, unknown>;
}

type Row = { kind: string; speed: Speed | undefined; vs: string; target: string; result: string };
const rows: Row[] = [];
const fmt = (x: number) => Math.round(x).toLocaleString("en-US");
const line = (label: string, x: Speed, extra = "") =>
  console.log(`${label.padEnd(42)} ${fmt(x.eps).padStart(11)} events/s  ${x.cpuUs.toFixed(2).padStart(8)} CPU µs/event${extra}`);
const check = (label: string, a: unknown, b: unknown) => {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${label}: outputs differ\n${JSON.stringify(a)}\n${JSON.stringify(b)}`);
};

console.log(`transform bench: ${eventCount} distinct identify events, ~${measureMs} ms per measurement, batches of ${batchSize}`);
console.log(`(CPU µs/event counts all threads of this process: the sandbox runs in a worker thread)\n`);

// ---- mapping ------------------------------------------------------------------------------------
{
  let compileJsonata: ((expr: string) => { evaluate(input: unknown, bindings?: unknown): unknown }) | undefined;
  try {
    compileJsonata = (await tryImport("../src/pipeline/jsonata/index.ts"))?.compileJsonata as typeof compileJsonata;
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
    rows.push({ kind: "mapping (compiled)", speed: undefined, vs: "—", target: "≥ 30× jsonata", result: "skipped (compiler not present)" });
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
    rows.push({ kind: "mapping (compiled)", speed, vs: `${ratio.toFixed(1)}× jsonata (${fmt(base.eps)}/s)`, target: "≥ 30×", result: ratio >= 30 ? "PASS" : "FAIL" });
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
  const t = await createJavaScriptTransform(jsSource);
  const [r] = await t.transformBatch([events[7]]);
  check("javascript", r, { ok: true, value: naive(events[7]) });
  const parts = batches(events);
  // Interleaved, best of three each, so a busy machine skews both alike.
  let base: Speed | undefined;
  let speed: Speed | undefined;
  for (let k = 0; k < 3; k++) {
    const b = await measure(events.length, () => {
      for (const ev of events) naive(ev);
    });
    const s = await measure(events.length, async () => {
      for (const p of parts) await t.transformBatch(p);
    });
    if (!base || b.eps > base.eps) base = b;
    if (!speed || s.eps > speed.eps) speed = s;
  }
  const single = await measure(200, async () => {
    for (let i = 0; i < 200; i++) await t.transformBatch([events[i]]);
  });
  t.dispose();
  vm.dispose();
  rt.dispose();
  jsSpeed = speed!;
  const ratio = speed!.eps / base!.eps;
  line("javascript: naive evalCode per event", base!);
  line(`javascript: sandbox, batches of ${batchSize}`, speed!, `  (${ratio.toFixed(1)}× events/s, ${(base!.cpuUs / speed!.cpuUs).toFixed(1)}× CPU)`);
  line("javascript: sandbox, batches of 1", single, "  (a round trip to the worker per event)");
  rows.push({ kind: `javascript (batches of ${batchSize})`, speed: speed!, vs: `${ratio.toFixed(1)}× naive evalCode (${fmt(base!.eps)}/s)`, target: "≥ 5×", result: ratio >= 5 ? "PASS" : "FAIL" });
}

// ---- python -------------------------------------------------------------------------------------
{
  let createPythonTransform: ((source: string) => Promise<SandboxedTransform>) | undefined;
  try {
    createPythonTransform = (await tryImport("../src/pipeline/transform/python.ts"))?.createPythonTransform as typeof createPythonTransform;
  } catch (e) {
    console.log(`python: failed to import: ${(e as Error).message}`);
  }
  if (!createPythonTransform) {
    console.log("python: skipped (python.ts not present)");
    rows.push({ kind: "python", speed: undefined, vs: "—", target: "measured", result: "skipped (not present)" });
  } else {
    const t = await createPythonTransform(pySource);
    const [r] = await t.transformBatch([events[7]]);
    if (!r?.ok) throw new Error(`python transform failed: ${JSON.stringify(r)}`);
    const parts = batches(events);
    const speed = await measure(events.length, async () => {
      for (const p of parts) await t.transformBatch(p);
    });
    t.dispose();
    line(`python: batches of ${batchSize}`, speed);
    rows.push({ kind: `python (batches of ${batchSize})`, speed, vs: jsSpeed ? `${(speed.eps / jsSpeed.eps).toFixed(2)}× javascript` : "—", target: "measured", result: "reported" });
  }
}

console.log("\n| kind | events/s | CPU µs/event | vs baseline | target | result |\n|---|---:|---:|---|---|---|");
for (const r of rows) {
  console.log(`| ${r.kind} | ${r.speed ? fmt(r.speed.eps) : "—"} | ${r.speed ? r.speed.cpuUs.toFixed(2) : "—"} | ${r.vs} | ${r.target} | ${r.result} |`);
}
process.exit(rows.some((r) => r.result === "FAIL") ? 1 : 0);
