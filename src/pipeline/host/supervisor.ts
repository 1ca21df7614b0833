import type { Subprocess } from "bun";
import type { OutcomeRecorder } from "../../event/outcome.ts";
import type { PipelineSnapshot } from "../stats.ts";
import { log } from "../../util/log.ts";
import type { ReplayOptions, ReplayProgress } from "../replay.ts";
import { pipelineKey, workerOf, type Pipelines } from "./pipelines.ts";
import type { Call, FromWorker, Init, Method } from "./protocol.ts";

const CHILD = new URL("./child.ts", import.meta.url).pathname;

export interface SupervisorOptions {
  /** Worker processes; each runs the pipelines of its share of the connections. */
  count: number;
  /** What each worker is started with (its `share` is set per worker). */
  init: Omit<Init, "type">;
  outcomes?: OutcomeRecorder;
  /** First restart delay after a worker died; doubles to 5 s while it keeps dying. */
  restartDelayMs?: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  onProgress?: (p: unknown) => void;
}

/** One worker process, restarted whenever it exits unasked. */
class Worker {
  proc?: Subprocess;
  #ids = 0;
  #pending = new Map<number, Pending>();
  #stopping = false;
  #delay: number;
  #readyOnce?: () => void;
  /** Resolves the first time a worker of this slot has its pipelines running. */
  readonly ready = new Promise<void>((r) => (this.#readyOnce = r));
  restarts = 0;

  constructor(
    readonly index: number,
    readonly o: SupervisorOptions,
  ) {
    this.#delay = o.restartDelayMs ?? 250;
    this.#spawn();
  }

  #spawn() {
    const proc = Bun.spawn({
      cmd: [process.execPath, CHILD],
      stdio: ["ignore", "inherit", "inherit"],
      env: process.env,
      serialization: "json",
      ipc: (m: FromWorker) => this.#message(m),
    });
    this.proc = proc;
    const init: Init = {
      type: "init",
      ...this.o.init,
      runtime: { ...this.o.init.runtime, share: { index: this.index, count: this.o.count } },
    };
    proc.send(init);
    void proc.exited.then((code) => this.#exited(proc, code));
  }

  #message(m: FromWorker) {
    switch (m.type) {
      case "ready":
        this.#delay = this.o.restartDelayMs ?? 250;
        this.#readyOnce?.();
        return;
      case "outcomes": {
        const r = this.o.outcomes;
        if (!r) return;
        for (const x of m.records) r.record(...x);
        for (const [connection, pipeline, ids] of m.loaded) r.loaded(connection, pipeline, ids);
        return;
      }
      case "progress":
        this.#pending.get(m.id)?.onProgress?.(m.progress);
        return;
      case "result": {
        const p = this.#pending.get(m.id);
        this.#pending.delete(m.id);
        if (m.error !== undefined) p?.reject(new Error(m.error));
        else p?.resolve(m.value);
      }
    }
  }

  #exited(proc: Subprocess, code: number | null) {
    if (proc !== this.proc) return;
    for (const p of this.#pending.values()) p.reject(new Error("pipeline worker exited"));
    this.#pending.clear();
    if (this.#stopping) return;
    // What it had read but not acknowledged is redelivered to its successor after ack_wait.
    log.error("pipeline worker died; restarting it", {
      worker: this.index,
      pid: proc.pid,
      exitCode: code,
      signal: proc.signalCode,
      restartInMs: this.#delay,
    });
    this.restarts++;
    const delay = this.#delay;
    this.#delay = Math.min(this.#delay * 2, 5000);
    setTimeout(() => !this.#stopping && this.#spawn(), delay);
  }

  call<T>(method: Method, args?: unknown, onProgress?: (p: unknown) => void): Promise<T> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode)
      return Promise.reject(new Error("pipeline worker is restarting"));
    const id = ++this.#ids;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onProgress });
      const m: Call = { type: "call", id, method, args };
      proc.send(m);
    });
  }

  /** Resolves with the worker's final counts (none if it could not say). */
  async stop(): Promise<PipelineSnapshot[]> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) {
      this.#stopping = true;
      return [];
    }
    // Its batches are flushed and acknowledged before it exits; a worker that cannot is killed.
    const final = this.call<PipelineSnapshot[]>("stop").catch(() => [] as PipelineSnapshot[]);
    this.#stopping = true;
    const snapshots = await Promise.race([final, Bun.sleep(30_000).then(() => [] as PipelineSnapshot[])]);
    await Promise.race([proc.exited, Bun.sleep(5_000)]);
    if (proc.exitCode === null) proc.kill("SIGKILL");
    return snapshots ?? [];
  }
}

/**
 * The node's pipelines in `count` worker processes, each with a stable share of the connections
 * (workerOf). A worker that dies is restarted; JetStream redelivers what it had not acknowledged,
 * so no accepted event is lost (test/integration/pipeline-workers.test.ts kills one).
 */
export class PipelineSupervisor implements Pipelines {
  readonly #workers: Worker[];

  constructor(readonly o: SupervisorOptions) {
    this.#workers = Array.from({ length: o.count }, (_, i) => new Worker(i, o));
  }

  /** Resolves when every worker has its pipelines running. */
  get ready(): Promise<void> {
    return Promise.all(this.#workers.map((w) => w.ready)).then(() => {});
  }

  get pids(): number[] {
    return this.#workers.map((w) => w.proc?.pid ?? 0);
  }

  /** Workers restarted after dying, since the node started. */
  get restarts(): number {
    return this.#workers.reduce((n, w) => n + w.restarts, 0);
  }

  /** Every worker's answer; a worker restarting right now answers nothing rather than failing the rest. */
  async #all<T>(method: Method): Promise<T[]> {
    const answers = await Promise.all(
      this.#workers.map((w) =>
        w.call<T>(method).then(
          (v) => [v],
          () => [],
        ),
      ),
    );
    return answers.flat();
  }

  async snapshots(): Promise<PipelineSnapshot[]> {
    if (this.#final) return this.#final;
    return (await this.#all<PipelineSnapshot[]>("snapshots")).flat();
  }

  /** What the workers had done when they stopped, their last batches included. */
  #final?: PipelineSnapshot[];

  async snapshot(key: string): Promise<PipelineSnapshot | undefined> {
    return (await this.snapshots()).find((s) => pipelineKey(s.connection, s.pipeline) === key);
  }

  async lastError(): Promise<string | undefined> {
    const errors = (await this.#all<string | undefined>("lastError")).filter(Boolean);
    return errors.length ? errors.join("\n") : undefined;
  }

  async reload(): Promise<void> {
    await Promise.all(this.#workers.map((w) => w.call("reload")));
  }

  async warehouseUp(): Promise<boolean> {
    const up = await Promise.all(this.#workers.map((w) => w.call<boolean>("warehouseUp").catch(() => false)));
    return up.every(Boolean);
  }

  replay(o: Omit<ReplayOptions, "onProgress">, onProgress: (p: ReplayProgress) => void): Promise<ReplayProgress> {
    const w = this.#workers[workerOf(o.connection, this.#workers.length)]!;
    return w.call<ReplayProgress>("replay", o, (p) => onProgress(p as ReplayProgress));
  }

  async metrics(): Promise<unknown[][]> {
    return this.#all<unknown[]>("metrics");
  }

  async stop(): Promise<void> {
    this.#final = (await Promise.all(this.#workers.map((w) => w.stop()))).flat();
  }
}
