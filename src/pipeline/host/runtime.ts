import type { Bus } from "../../bus/connection.ts";
import { ensureDlqStream } from "../../bus/dead-letters.ts";
import type { NodeOptions } from "../../config/env.ts";
import type { Config } from "../../config/loader.ts";
import type { ConfigStore } from "../../config/store.ts";
import type { OutcomeRecorder } from "../../event/outcome.ts";
import type { PipelineSnapshot } from "../stats.ts";
import { migrateEventsTable } from "../../sink/clickhouse/events-table.ts";
import type { InserterOptions } from "../../sink/clickhouse/inserter.ts";
import { connectWarehouse, warehouseOptionsOf, type Warehouse } from "../../sink/clickhouse/server.ts";
import { log } from "../../util/log.ts";
import { PipelineManager } from "../manager.ts";
import { watchForgotten } from "../users/forgotten.ts";
import { replay, type ReplayOptions, type ReplayProgress } from "../replay.ts";
import type { BatchOptions } from "../worker.ts";
import { pipelineKey, workerOf, type Pipelines } from "./pipelines.ts";

export type RuntimeOptions = Pick<
  NodeOptions,
  | "clickhouseUrl"
  | "clickhouseUser"
  | "clickhousePassword"
  | "clickhouseCluster"
  | "database"
  | "streamReplicas"
  | "batchMaxRows"
  | "batchMaxBytes"
  | "batchMaxAgeMs"
  | "ackWaitMs"
> & {
  inserter?: InserterOptions;
  /** This runtime's share of the connections when several workers split them. */
  share?: { index: number; count: number };
};

/**
 * The pipelines of one process: connects the warehouse (retrying until it answers: events wait in
 * JetStream meanwhile), migrates the events table, then keeps a PipelineManager in step with the
 * configuration. The node runs one in its own thread (TRIBUTARY_PIPELINE_WORKERS=0) or one per
 * worker process (src/pipeline/host/child.ts).
 */
export class PipelineRuntime implements Pipelines {
  readonly pids: number[] = [];
  #warehouse?: Warehouse;
  #manager?: PipelineManager;
  #stopping = false;
  #unsubscribe?: () => void;
  #unwatch?: () => void;
  /** Resolves when the warehouse answered and the first configuration is applied. */
  readonly ready: Promise<void>;

  constructor(
    readonly bus: Bus,
    readonly config: ConfigStore,
    readonly o: RuntimeOptions,
    readonly outcomes?: OutcomeRecorder,
  ) {
    this.ready = new Promise<void>((resolve) => void this.#connect().then((ok) => ok && resolve()));
  }

  /** The configuration with only this runtime's connections. */
  #mine(c: Config): Config {
    const share = this.o.share;
    if (!share || share.count <= 1) return c;
    return {
      ...c,
      connections: new Map([...c.connections].filter(([name]) => workerOf(name, share.count) === share.index)),
    };
  }

  async #connect(): Promise<boolean> {
    const o = this.o;
    if (!o.clickhouseUrl) return false;
    for (let delay = 250; !this.#stopping; delay = Math.min(delay * 2, 10_000)) {
      try {
        this.#warehouse = await connectWarehouse(warehouseOptionsOf(o));
        await migrateEventsTable(this.#warehouse);
        await ensureDlqStream(this.bus.jsm, o.streamReplicas);
        // Forgotten users' events are dropped by every pipeline of this process from its first batch.
        this.#unwatch ??= await watchForgotten(this.bus.js, o.streamReplicas);
        const batch: BatchOptions = {
          maxRows: o.batchMaxRows,
          maxBytes: o.batchMaxBytes,
          maxAgeMs: o.batchMaxAgeMs,
          ackWaitMs: o.ackWaitMs,
        };
        const manager = new PipelineManager(this.bus, this.#warehouse, batch, o.inserter, this.outcomes);
        await manager.apply(this.#mine(this.config.current));
        if (this.#stopping) {
          await manager.stop();
          return false;
        }
        this.#manager = manager;
        this.#unsubscribe = this.config.onChange((c) => void manager.apply(this.#mine(c)));
        log.info("pipelines running", {
          clickhouse: this.#warehouse.features.version,
          workers: [...manager.workers.keys()],
        });
        return true;
      } catch (e) {
        await this.#warehouse?.close().catch(() => {});
        this.#warehouse = undefined;
        log.warn("warehouse not ready; retrying", {
          error: String((e as Error).message ?? e).split("\n")[0],
          retryInMs: delay,
        });
        await Bun.sleep(delay);
      }
    }
    return false;
  }

  async snapshots(): Promise<PipelineSnapshot[]> {
    if (this.#final) return this.#final;
    return this.#manager ? this.#manager.snapshots() : [];
  }

  /** What the pipelines had done when they stopped, their last batches included. */
  #final?: PipelineSnapshot[];

  async snapshot(key: string): Promise<PipelineSnapshot | undefined> {
    return (await this.snapshots()).find((s) => pipelineKey(s.connection, s.pipeline) === key);
  }

  async lastError(): Promise<string | undefined> {
    return this.#manager?.lastError;
  }

  async reload(): Promise<void> {
    this.config.reload();
    await this.#manager?.apply(this.#mine(this.config.current));
  }

  async warehouseUp(): Promise<boolean> {
    if (!this.#manager || !this.#warehouse) return false;
    return this.#warehouse.client.ping().then(
      (r) => r.success,
      () => false,
    );
  }

  async replay(o: Omit<ReplayOptions, "onProgress">, onProgress: (p: ReplayProgress) => void): Promise<ReplayProgress> {
    if (!this.#manager || !this.#warehouse) throw new Error("ClickHouse is not reachable yet; retry later");
    return replay(this.bus, this.#warehouse, this.config.current, { ...o, onProgress });
  }

  /** In this process the node's own registry already holds them. */
  async metrics(): Promise<unknown[][]> {
    return [];
  }

  /**
   * Flushes the pipelines' batches and closes the warehouse; the bus and config are the caller's.
   * Snapshots go on answering with the final counts.
   */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#unsubscribe?.();
    this.#unwatch?.();
    const manager = this.#manager;
    if (manager) {
      const before = await manager.snapshots().catch(() => [] as PipelineSnapshot[]);
      const live = new Map([...manager.workers].map(([key, w]) => [key, w.stats]));
      await manager.stop();
      this.#final = before.map((s) => {
        const st = live.get(pipelineKey(s.connection, s.pipeline));
        if (!st) return s;
        const { received, filteredOut, consentFailed, transformed, failed, loaded, deadLettered } = st;
        return { ...s, received, filteredOut, consentFailed, transformed, failed, loaded, deadLettered, lag: null };
      });
    }
    await this.#warehouse?.close();
  }
}
