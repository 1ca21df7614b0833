import type { ShardedEventLog } from "../bus/shard-owners.ts";
import { log } from "../util/log.ts";
import type { FromIngestThread, IngestCounts, IngestThreadInit, ToIngestThread } from "./ingest-protocol.ts";

const ENTRY = new URL("./ingest-thread.ts", import.meta.url).href;

export interface IngestWorkersOptions extends Omit<IngestThreadInit, "type" | "index" | "peers"> {
  /** The main thread's event log: thread 0 of `count`. */
  mainLog: ShardedEventLog;
}

interface Thread {
  worker: Worker;
  ready: Promise<void>;
  stopping: boolean;
  startedAt: number;
}

/**
 * The node's ingest threads besides its main thread (which is thread 0): started with a port to
 * every other thread, restarted when one dies (what it had stored was acknowledged; what it had
 * not, its senders retry), and asked for their metrics at scrape time.
 */
export class IngestWorkers {
  readonly #threads = new Map<number, Thread>();
  #metricIds = 0;
  readonly #metricWaits = new Map<number, (v: any) => void>();
  #stopping = false;
  /** Threads restarted after dying, since the node started. */
  restarts = 0;

  constructor(readonly o: IngestWorkersOptions) {}

  /** Starts threads 1..count-1, each connected to all the others; resolves when they listen. */
  async start(): Promise<void> {
    const peers = new Map<number, { peer: number; port: MessagePort }[]>();
    for (let i = 1; i < this.o.count; i++) peers.set(i, []);
    for (let i = 0; i < this.o.count; i++)
      for (let j = i + 1; j < this.o.count; j++) {
        const { port1, port2 } = new MessageChannel();
        if (i === 0) this.o.mainLog.setPeer(j, port1);
        else peers.get(i)!.push({ peer: j, port: port1 });
        peers.get(j)!.push({ peer: i, port: port2 });
      }
    for (let i = 1; i < this.o.count; i++) this.#spawn(i, peers.get(i)!);
    await Promise.all([...this.#threads.values()].map((t) => t.ready));
  }

  #spawn(index: number, peers: { peer: number; port: MessagePort }[]) {
    // The environment as it is now (a thread would otherwise see the process's initial one): the
    // configuration's ${VAR}s must expand alike in every thread.
    const worker = new Worker(ENTRY, { env: { ...process.env } } as WorkerOptions);
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const thread: Thread = {
      worker,
      stopping: false,
      startedAt: performance.now(),
      ready: new Promise<void>((res, rej) => {
        ready = res;
        failed = rej;
      }),
    };
    thread.ready.catch(() => {});
    this.#threads.set(index, thread);
    worker.onmessage = (e: MessageEvent<FromIngestThread>) => {
      const m = e.data;
      if (m.type === "ready") ready();
      else if (m.type === "failed") failed(new Error(m.error));
      else if (m.type === "metrics" || m.type === "stats") {
        this.#metricWaits.get(m.id)?.(m.type === "metrics" ? m.values : m.stats);
        this.#metricWaits.delete(m.id);
      }
    };
    worker.addEventListener("close", () => this.#closed(index, thread));
    const { mainLog: _, ...init } = this.o;
    const message: IngestThreadInit = { type: "init", ...init, index, peers };
    worker.postMessage(
      message,
      peers.map((p) => p.port),
    );
  }

  #closed(index: number, thread: Thread) {
    if (this.#threads.get(index) !== thread || thread.stopping || this.#stopping) return;
    // Its acknowledged events are in JetStream; requests it was answering get no answer and are
    // retried by their senders. Its shards move to its successor, which reloads their index.
    // One that keeps dying as it starts is restarted after a pause (doubling to 5 s), not in a loop.
    const quick = performance.now() - thread.startedAt < 5000;
    const delay = quick ? Math.min((this.#delays.get(index) ?? 125) * 2, 5000) : 0;
    this.#delays.set(index, quick ? delay : 125);
    log.error("ingest thread died; restarting it", { thread: index, restartInMs: delay });
    this.restarts++;
    setTimeout(() => this.#respawn(index, thread), delay);
  }

  readonly #delays = new Map<number, number>();

  #respawn(index: number, dead: Thread) {
    if (this.#threads.get(index) !== dead || this.#stopping) return;
    const peers: { peer: number; port: MessagePort }[] = [];
    for (let j = 0; j < this.o.count; j++) {
      if (j === index) continue;
      const { port1, port2 } = new MessageChannel();
      if (j === 0) this.o.mainLog.setPeer(index, port1);
      else {
        const other = this.#threads.get(j)?.worker;
        other?.postMessage({ type: "peer", peer: index, port: port1 } satisfies ToIngestThread, [port1]);
      }
      peers.push({ peer: j, port: port2 });
    }
    this.#spawn(index, peers);
  }

  /** Asks every thread; one that does not answer within 2 s (restarting) is left out. */
  #ask<T>(type: "metrics" | "stats"): Promise<T[]> {
    const asks = [...this.#threads.values()].map(
      (t) =>
        new Promise<T[]>((resolve) => {
          const id = ++this.#metricIds;
          const timer = setTimeout(() => {
            this.#metricWaits.delete(id);
            resolve([]);
          }, 2000);
          this.#metricWaits.set(id, (v: T) => {
            clearTimeout(timer);
            resolve([v]);
          });
          t.worker.postMessage({ type, id } satisfies ToIngestThread);
        }),
    );
    return Promise.all(asks).then((a) => a.flat());
  }

  /** prom-client values of every thread, to merge into /metrics. */
  async metrics(): Promise<unknown[][]> {
    return (await this.#ask<unknown[]>("metrics")).filter((v) => v.length);
  }

  /** What every thread's sources counted. */
  stats(): Promise<IngestCounts[]> {
    return this.#ask<IngestCounts>("stats");
  }

  /** Ends a thread abruptly, as a crash would (tests); it is restarted like a dead one. */
  crash(index: number): void {
    this.#threads.get(index)?.worker.terminate();
  }

  /** Resolves when thread `index` (after a restart, its successor) listens. */
  ready(index: number): Promise<void> {
    return this.#threads.get(index)?.ready ?? Promise.resolve();
  }

  /** Asks every thread `type` and waits for `answer` (at most 15 s). */
  #all(type: "drain" | "stop", answer: "drained" | "stopped"): Promise<void> {
    return Promise.all(
      [...this.#threads.values()].map(async (t) => {
        const done = new Promise<void>((resolve) => {
          t.worker.addEventListener("message", (e: MessageEvent<FromIngestThread>) => {
            if (e.data.type === answer) resolve();
          });
        });
        t.worker.postMessage({ type } satisfies ToIngestThread);
        await Promise.race([done, Bun.sleep(15_000)]);
      }),
    ).then(() => {});
  }

  /** Every thread stops listening and finishes the requests it has, their JetStream writes included. */
  drain(): Promise<void> {
    this.#stopping = true;
    for (const t of this.#threads.values()) t.stopping = true;
    return this.#all("drain", "drained");
  }

  /** Then each closes its connections and ends. */
  async stop(): Promise<void> {
    await this.drain();
    await this.#all("stop", "stopped");
    for (const t of this.#threads.values()) t.worker.terminate();
  }
}
