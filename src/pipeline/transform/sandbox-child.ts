/**
 * Entry point of a sandbox process (started by sandbox-process.ts, isolated as sandbox-isolation.ts
 * describes). It hosts one transformation with today's in-process guards (QuickJS or Pyodide in a
 * Worker of this process) and answers the node's batches over stdin/stdout.
 *
 * Nothing here is trusted by the node: a guest that escapes its interpreter owns this process, so
 * the node keeps its own deadlines and checks every frame it gets back.
 */
import { FrameReader, encodeFrame, type BatchFrame, type FromSandbox, type ToSandbox } from "./sandbox-channel.ts";
import type { PythonTransform } from "./python.ts";
import type { SandboxedTransform, TransformResult } from "./types.ts";

const out = Bun.stdout.writer();
const send = (m: FromSandbox) => {
  out.write(encodeFrame(m));
  out.flush();
};

let transform: SandboxedTransform | undefined;
/** Python takes the events' JSON text as it came: no parse here, no stringify there. */
let python: PythonTransform | undefined;
let cpuBudgetMicros = Infinity;
let recycling = false;

async function load(m: Extract<ToSandbox, { t: "init" }>) {
  cpuBudgetMicros = m.cpuSeconds * 0.9 * 1e6;
  try {
    if (m.unguarded) transform = unguarded(m.source);
    else if (m.kind === "javascript")
      transform = await (await import("./javascript.ts")).createJavaScriptTransform(m.source, m.limits);
    else
      transform = python = (await (
        await import("./python.ts")
      ).createPythonTransform(m.source, m.limits)) as PythonTransform;
    send({ t: "ready" });
  } catch (e) {
    const x = e as Error;
    send({ t: "loadError", message: x.message ?? String(e), config: x.name === "TransformLoadError" });
  }
}

/**
 * Test only: the guest as plain Bun code holding the host's fs, net and process, as if it had
 * escaped its interpreter. What it can still do is what this process layer leaves it.
 */
function unguarded(source: string): SandboxedTransform {
  const fn = new Function("fs", "net", "process", "Bun", `${source}\n;return transform;`)(
    require("node:fs"),
    require("node:net"),
    process,
    Bun,
  ) as (e: unknown) => unknown;
  return {
    async transformBatch(events) {
      const results: TransformResult[] = [];
      for (const e of events) {
        try {
          results.push({ ok: true, value: (await fn(e)) ?? undefined });
        } catch (err) {
          results.push({ ok: false, error: String((err as Error)?.message ?? err) });
        }
      }
      return results;
    },
    dispose() {},
  };
}

async function handle(m: ToSandbox | BatchFrame) {
  if ("t" in m) return m.t === "init" ? load(m) : undefined;
  let results: TransformResult[];
  if (!transform) results = m.events.map(() => ({ ok: false, error: "sandbox not loaded" }));
  else if (python) results = await python.transformJsonBatch(m.events);
  else {
    const events: unknown[] = JSON.parse(`[${m.events.join(",")}]`);
    results =
      events.length === m.events.length
        ? await transform.transformBatch(events)
        : m.events.map(() => ({ ok: false, error: "malformed batch" }));
  }
  send({ t: "result", id: m.id, results });
  const used = process.cpuUsage();
  if (!recycling && used.user + used.system > cpuBudgetMicros) {
    recycling = true;
    send({ t: "recycle" });
  }
}

const reader = new FrameReader();
let queue: Promise<unknown> = Promise.resolve();
for await (const chunk of Bun.stdin.stream()) {
  let frames: unknown[];
  try {
    frames = reader.push(chunk);
  } catch {
    process.exit(3);
  }
  for (const f of frames) queue = queue.then(() => handle(f as ToSandbox | BatchFrame));
}
// stdin closed: the node stopped or went away.
transform?.dispose();
process.exit(0);
