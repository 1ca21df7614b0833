import type { Bus } from "../bus/connection.ts";
import type { Config } from "../config/loader.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { PipelineWorker, batchDefaults, type BatchOptions } from "./worker.ts";
import { eventsStage } from "./events-stage.ts";
import type { InserterOptions } from "../sink/clickhouse/inserter.ts";
import { log } from "../util/log.ts";

/**
 * Keeps one worker per enabled pipeline of the current configuration: starts new ones, stops
 * disabled or removed ones (their consumers stay, so re-enabling resumes where they stopped),
 * and swaps filters in place.
 */
export class PipelineManager {
  readonly workers = new Map<string, PipelineWorker>();
  #applying: Promise<void> = Promise.resolve();

  constructor(
    readonly bus: Bus,
    readonly warehouse: Warehouse,
    readonly batch: BatchOptions = batchDefaults,
    readonly inserter?: InserterOptions,
  ) {}

  /** Serialised, so quick successive reloads apply in order. */
  apply(config: Config): Promise<void> {
    this.#applying = this.#applying.then(() => this.#apply(config)).catch((e) => log.error("applying pipelines failed", { error: String(e) }));
    return this.#applying;
  }

  async #apply(config: Config): Promise<void> {
    const wanted = new Map<string, { connection: string; pipeline: string; filter?: string }>();
    for (const c of config.connections.values()) {
      if (c.source === "raw") continue;
      for (const p of c.pipelines ?? []) {
        if (p.import !== "events" || p.enabled === false) continue;
        wanted.set(`${c.connection}/${p.name}`, { connection: c.connection, pipeline: p.name, filter: p.filter });
      }
    }
    for (const [key, w] of this.workers) {
      if (!wanted.has(key)) {
        await w.stop();
        this.workers.delete(key);
        log.info("pipeline stopped", { pipeline: key });
      }
    }
    for (const [key, p] of wanted) {
      const existing = this.workers.get(key);
      if (existing) {
        existing.setFilter(p.filter);
        continue;
      }
      const w = new PipelineWorker(this.bus, this.warehouse, p.connection, p.pipeline, p.filter, eventsStage(p.connection, p.pipeline, this.warehouse.features), this.batch, this.inserter);
      await w.start();
      this.workers.set(key, w);
      log.info("pipeline started", { pipeline: key });
    }
  }

  async stop(): Promise<void> {
    await this.#applying;
    await Promise.all([...this.workers.values()].map((w) => w.stop()));
    this.workers.clear();
  }
}
