/**
 * JavaScript and Python transformations in a child OS process of their own (the node's side).
 *
 * The child (sandbox-child.ts) runs the interpreter with its in-process guards; this side assumes
 * those guards may fail and keeps the budgets the guest cannot touch:
 *  - a wall-clock deadline per chunk of events, computed from the number of events and the
 *    per-event limit, started when the chunk before it answered. Past it the process is killed
 *    (SIGKILL) and a fresh one started. Which event was running is not taken from the child (a guest
 *    that owns the process could lie): the chunk's events are replayed one per chunk, where the next
 *    overrun names its event exactly. That event fails with the reason; the others land.
 *  - a process that dies (a crash, the memory cgroup's OOM kill, the CPU-time rlimit) is handled the
 *    same way;
 *  - every frame is size-checked and every result shape-checked; anything else kills the process.
 * Results of the chunks that finished are kept, so a restart costs only the unfinished events.
 */
import type { Subprocess } from "bun";
import { log } from "../../util/log.ts";
import { createMemoryGroup } from "./sandbox-cgroup.ts";
import {
  FrameError,
  FrameReader,
  encodeBatchFrame,
  encodeFrame,
  type FromSandbox,
  type SandboxKind,
  type ToSandbox,
} from "./sandbox-channel.ts";
import {
  describeIsolation,
  processMemoryBytes,
  sandboxCommand,
  type SandboxProcessOptions,
} from "./sandbox-isolation.ts";
import { complete, cut, decodeResultObject, encodeJson, fail, type Results } from "./host.ts";
import { TransformLoadError, type SandboxedTransform, type TransformResult } from "./types.ts";

/** Events per frame: few enough that a killed chunk is found fast (5 s + 128 x 2 x the per-event limit), enough to amortise a frame. */
const chunkEvents = 128;
const chunkBytes = 1024 * 1024;
/** Starting Bun and booting Pyodide in a fresh process takes ~2.5 s; a loaded machine needs more. */
const bootMs = 60_000;
/** Slack on top of the per-event budget of a chunk: an in-process restart of the interpreter fits in it. */
const chunkGraceMs = 5_000;
const maxStderrBytes = 16 * 1024;

let announced = false;
/** The start-up line saying which sandbox layers are active (once per process). */
export function announce(o: SandboxProcessOptions) {
  if (announced) return;
  announced = true;
  const layers = describeIsolation(o);
  (layers.missing.length ? log.warn : log.info)("transform sandbox layers", { ...layers });
  if (o.unguardedForTests)
    log.warn("TRIBUTARY_SANDBOX_TEST_UNGUARDED=1: JavaScript transforms run WITHOUT their interpreter (tests only)");
}

export async function createProcessTransform(
  kind: SandboxKind,
  source: string,
  o: SandboxProcessOptions,
): Promise<SandboxedTransform> {
  if (typeof source !== "string") throw new TransformLoadError(`${kind} transformation source must be a string`);
  announce(o);
  const t = new ProcessTransform(kind, source, o);
  const r = await t.spawn();
  if (r !== true) {
    t.dispose();
    throw r;
  }
  return t;
}

/** Deadline of a chunk of `n` events, from the per-event limit. */
export const chunkDeadlineMs = (n: number, timeoutMs: number) => chunkGraceMs + n * 2 * timeoutMs;

type Ended = { reason: string };

class ProcessTransform implements SandboxedTransform {
  /** Processes started after the first. */
  restarts = 0;
  #proc: Subprocess<"pipe", "pipe", "pipe"> | undefined;
  #onFrame: ((f: FromSandbox) => void) | undefined;
  #onEnd: ((e: Ended) => void) | undefined;
  #ended: Ended | undefined;
  #recycle = false;
  #queue: Promise<unknown> = Promise.resolve();
  #nextId = 1;
  #disposed = false;

  constructor(
    readonly kind: SandboxKind,
    private readonly source: string,
    private readonly o: SandboxProcessOptions,
  ) {}

  transformBatch(events: unknown[]): Promise<TransformResult[]> {
    const p = this.#queue.then(() => this.#runBatch(events));
    this.#queue = p.catch(() => {});
    return p;
  }

  dispose() {
    this.#disposed = true;
    this.#stop("transform disposed");
  }

  /** Start a process and load the user's code in it: true, or why not. */
  async spawn(): Promise<true | Error> {
    const group = createMemoryGroup(processMemoryBytes(this.o.limits));
    const c = sandboxCommand(this.o, group?.procsFile);
    let proc: Subprocess<"pipe", "pipe", "pipe">;
    try {
      proc = Bun.spawn({ cmd: c.cmd, cwd: c.cwd, env: c.env, stdin: "pipe", stdout: "pipe", stderr: "pipe" });
    } catch (e) {
      group?.remove();
      return new Error(`sandbox process did not start: ${(e as Error).message}`);
    }
    this.#proc = proc;
    this.#ended = undefined;
    this.#recycle = false;
    this.#pump(proc);
    this.#drainStderr(proc);
    proc.exited.then((code) => {
      if (this.#proc === proc) this.#end({ reason: `sandbox process ended (${endedBy(proc.signalCode, code)})` });
      group?.remove();
    });
    const init: ToSandbox = {
      t: "init",
      kind: this.kind,
      source: this.source,
      limits: this.o.limits,
      cpuSeconds: this.o.cpuSeconds,
      unguarded: this.o.unguardedForTests && this.kind === "javascript",
    };
    const loadBudget = bootMs + Math.max(1000, this.o.limits.timeoutMs * 10);
    const out = await this.#converse([encodeFrame(init)], loadBudget, (f) => f.t === "ready" || f.t === "loadError");
    if ("reason" in out) {
      this.#stop(out.reason);
      return new Error(`${this.kind} sandbox did not start: ${out.reason}`);
    }
    const f = out.frames[0]!;
    if (f.t === "ready") return true;
    this.#stop("load failed");
    const m = f as Extract<FromSandbox, { t: "loadError" }>;
    return m.config ? new TransformLoadError(String(m.message)) : new Error(String(m.message));
  }

  async #runBatch(events: unknown[]): Promise<TransformResult[]> {
    const results: Results = new Array(events.length);
    const { encoded, todo } = encodeJson(events, results);
    let pending = todo;
    /** Events that were in a chunk when its process was killed: they go one per chunk. */
    const solo = new Set<number>();
    while (pending.length > 0) {
      if (this.#disposed) {
        for (const i of pending) results[i] = fail("transform disposed");
        break;
      }
      if (!this.#proc || this.#ended || this.#recycle) {
        this.#stop("replaced");
        this.restarts++;
        const r = await this.spawn();
        if (r !== true) {
          for (const i of pending) results[i] = fail(`sandbox could not be restarted: ${r.message}`);
          break;
        }
      }
      const chunks = cut(pending, {
        maxEvents: chunkEvents,
        maxBytes: chunkBytes,
        sizeOf: (i) => encoded[i]!.length,
        solo,
      });
      const ids = chunks.map(() => this.#nextId++);
      const frames = chunks.map((idx, k) =>
        encodeBatchFrame(
          ids[k]!,
          idx.map((i) => encoded[i]!),
        ),
      );
      let done = 0;
      const out = await this.#converse(
        frames,
        (k) => chunkDeadlineMs(chunks[k]!.length, this.o.limits.timeoutMs),
        (f) => {
          if (f.t !== "result") return false;
          const k = done;
          if (f.id !== ids[k] || !validResults(f.results, chunks[k]!.length))
            throw new FrameError("sandbox answered out of turn or with malformed results");
          chunks[k]!.forEach((i, j) => {
            results[i] = f.results[j]!;
          });
          done++;
          return done === chunks.length;
        },
      );
      if (!("reason" in out)) {
        pending = [];
        break;
      }
      // The process was killed or died while chunk `done` ran: the finished chunks are kept.
      this.#stop(out.reason);
      const stalled = chunks[done] ?? [];
      if (stalled.length === 1) results[stalled[0]!] = fail(out.reason);
      else for (const i of stalled) solo.add(i);
      pending = chunks
        .slice(done)
        .flat()
        .filter((i) => results[i] === undefined);
    }
    return complete(results);
  }

  /**
   * Send `frames`, then wait for answers until `complete` says so. `deadline(k)` is the budget of
   * the k-th answer, counted from the answer before it. Ends with the reason when the budget runs out
   * (the process is then killed) or the process ends.
   */
  #converse(
    frames: Uint8Array[],
    deadline: number | ((k: number) => number),
    complete: (f: FromSandbox) => boolean,
  ): Promise<{ frames: FromSandbox[] } | Ended> {
    const budget = typeof deadline === "number" ? () => deadline : deadline;
    return new Promise((resolve) => {
      const got: FromSandbox[] = [];
      let answered = 0;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const finish = (x: { frames: FromSandbox[] } | Ended) => {
        clearTimeout(timer);
        this.#onFrame = undefined;
        this.#onEnd = undefined;
        resolve(x);
      };
      const arm = () => {
        clearTimeout(timer);
        const ms = budget(answered);
        timer = setTimeout(() => {
          const reason = `transform exceeded the time limit (${this.o.limits.timeoutMs} ms per event) and its sandbox did not stop it within ${Math.round(ms)} ms; the sandbox process was killed and restarted`;
          this.#kill();
          finish({ reason });
        }, ms);
      };
      this.#onEnd = (e) => finish(e);
      this.#onFrame = (f) => {
        if (f.t === "recycle") {
          this.#recycle = true;
          return;
        }
        got.push(f);
        let last: boolean;
        try {
          last = complete(f);
        } catch (e) {
          this.#kill();
          return finish({ reason: `sandbox misbehaved: ${(e as Error).message}` });
        }
        if (last) return finish({ frames: got });
        answered++;
        arm();
      };
      if (this.#ended) return finish(this.#ended);
      arm();
      try {
        for (const f of frames) this.#proc!.stdin.write(f);
        this.#proc!.stdin.flush();
      } catch (e) {
        this.#kill();
        finish({ reason: `sandbox channel failed: ${(e as Error).message}` });
      }
    });
  }

  async #pump(proc: Subprocess<"pipe", "pipe", "pipe">) {
    const reader = new FrameReader();
    try {
      for await (const chunk of proc.stdout) {
        if (this.#proc !== proc) return;
        for (const f of reader.push(chunk)) {
          if (!f || typeof f !== "object" || !("t" in f))
            throw new FrameError("the sandbox sent a frame only the node sends");
          this.#onFrame?.(f as FromSandbox);
        }
      }
    } catch (e) {
      if (this.#proc === proc) {
        this.#kill();
        this.#end({ reason: `sandbox misbehaved: ${(e as Error).message}` });
      }
    }
  }

  /** The child's stderr (Bun's own crash reports; the guest has none) goes to the log, bounded. */
  async #drainStderr(proc: Subprocess<"pipe", "pipe", "pipe">) {
    let seen = 0;
    const decoder = new TextDecoder();
    try {
      for await (const chunk of proc.stderr) {
        if (seen >= maxStderrBytes) continue;
        const text = decoder.decode(chunk.subarray(0, maxStderrBytes - seen));
        seen += chunk.length;
        log.warn("transform sandbox stderr", { kind: this.kind, text });
      }
    } catch {
      /* the process went away */
    }
  }

  #end(e: Ended) {
    if (this.#ended) return;
    this.#ended = e;
    this.#onEnd?.(e);
  }

  #kill() {
    try {
      this.#proc?.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }

  #stop(reason: string) {
    const proc = this.#proc;
    if (!proc) return;
    this.#end({ reason });
    this.#proc = undefined;
    try {
      proc.stdin.end();
    } catch {
      /* closed */
    }
    try {
      proc.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

/** bubblewrap passes a killed child on as exit code 128 + signal. */
function endedBy(signal: string | number | null, code: number): string {
  const n =
    typeof signal === "number"
      ? signal
      : signal
        ? ({ SIGKILL: 9, SIGXCPU: 24, SIGXFSZ: 25 } as Record<string, number>)[signal]
        : code > 128
          ? code - 128
          : undefined;
  if (n === 9) return "killed: it reached its memory cap, or crashed";
  if (n === 24) return "killed: it used up its CPU-time limit";
  if (n === 25) return "killed: it tried to write a file";
  if (n !== undefined) return `killed by signal ${n}`;
  return signal ? `killed by ${signal}` : `exit code ${code}`;
}

/** Results as the sandbox sent them, one per event of the chunk, each of the `{ ok, value | error }` shape. */
function validResults(r: unknown, n: number): r is TransformResult[] {
  return Array.isArray(r) && r.length === n && r.every((x) => decodeResultObject(x) !== undefined);
}
