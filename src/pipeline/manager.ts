import type { Bus } from "../bus/connection.ts";
import type { Config } from "../config/loader.ts";
import type { Pipeline } from "../config/schema.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { PipelineWorker, batchDefaults, durableName, type BatchOptions } from "./worker.ts";
import { ensurePipelineConsumer, pipelineLag, type StreamPositions } from "./consumers.ts";
import { streamPositions } from "../bus/connection.ts";
import { RAW_PIPELINE } from "./raw-stage.ts";
import { StageFactory } from "./stages.ts";
import { filterOf } from "../event/selection.ts";
import { selectedBy } from "./export/selected-by.ts";
import { migrateUsersTable } from "./users/users-table.ts";
import type { CustomerModel } from "./users/customer-model.ts";
import { rulesOf, type IdentityRules } from "./users/identity-rules.ts";
import type { InserterOptions } from "../sink/clickhouse/inserter.ts";
import { log } from "../util/log.ts";
import { STREAM, legacyConsumerName } from "../bus/subjects.ts";
import { deadLetterCounts, dlqSubject } from "../bus/dead-letters.ts";
import type { OutcomeRecorder } from "../event/outcome.ts";
import { describeDestination, resolveDestination } from "../config/destination.ts";
import { ExportWorker } from "./export/worker.ts";
import type { ExportStage } from "./export/stage.ts";
import type { PipelineSnapshot } from "./stats.ts";

/** What JetStream names after a pipeline: two pipelines sharing either would share its messages. */
export interface PipelineNaming {
  consumer(connection: string, pipeline: string): string;
  deadLetters(connection: string, pipeline: string): string;
}

export const naming: PipelineNaming = { consumer: durableName, deadLetters: dlqSubject };

/** Every pipeline the node would run for a configuration: its own and each raw connection's table loader. */
export function pipelinesOf(config: Config): { connection: string; file: string; pipeline: string; index?: number }[] {
  const out: { connection: string; file: string; pipeline: string; index?: number }[] = [];
  for (const c of config.connections.values()) {
    if (c.source === "raw") out.push({ connection: c.connection, file: c.file, pipeline: RAW_PIPELINE });
    (c.pipelines ?? []).forEach((p, index) =>
      out.push({ connection: c.connection, file: c.file, pipeline: p.name, index }),
    );
  }
  return out;
}

/**
 * Pairs of pipelines that would share a durable consumer or a dead-letter subject (with the
 * names in use, only a pipeline name used twice in one connection). `bun run check` refuses them.
 */
export function nameCollisions(config: Config, n: PipelineNaming = naming) {
  const seen = new Map<string, ReturnType<typeof pipelinesOf>[number]>();
  const out: {
    a: ReturnType<typeof pipelinesOf>[number];
    b: ReturnType<typeof pipelinesOf>[number];
    what: string;
    name: string;
  }[] = [];
  for (const p of pipelinesOf(config)) {
    for (const [what, name] of [
      ["consumer", n.consumer(p.connection, p.pipeline)],
      ["dead-letter subject", n.deadLetters(p.connection, p.pipeline)],
    ] as const) {
      const other = seen.get(`${what}\0${name}`);
      if (other) out.push({ a: other, b: p, what, name });
      else seen.set(`${what}\0${name}`, p);
    }
  }
  return out;
}

interface Wanted {
  connection: string;
  pipeline: Pipeline;
  /** What requires a new worker when it changes (a filter alone is swapped in place). */
  signature: string;
  /** Set for a raw connection's table loader. */
  rawTable?: string;
}

/**
 * Keeps one worker per enabled pipeline of the current configuration: starts new ones, stops
 * disabled or removed ones (their consumers stay, so re-enabling resumes where they stopped),
 * swaps filters in place, and rebuilds users pipelines when their transformation or the
 * Customer Model changes.
 */
/**
 * Before the node answers anyone: every enabled pipeline of the configuration it starts with gets
 * its durable consumer, starting after the stream sequence the node connected at. Pipelines then
 * catch up from it however long the warehouse or a Python transform takes to be ready, so nothing
 * the node accepts is missed (another node may have created a consumer first, from its own start).
 * A consumer of the old naming hands its position over and goes, unless a disabled pipeline may
 * still need it.
 */
export async function ensureConsumersAtStart(bus: Bus, config: Config, ackWaitMs: number): Promise<void> {
  const after = bus.startSeq ?? (await streamPositions(bus.jsm, bus.layout));
  const migrated = new Set<string>();
  const stillNeeded = new Set<string>();
  for (const c of config.connections.values()) {
    const names = c.source === "raw" ? [RAW_PIPELINE] : [];
    for (const p of c.pipelines ?? []) {
      if (p.enabled === false) stillNeeded.add(legacyConsumerName(c.connection, p.name));
      else names.push(p.name);
    }
    for (const name of names) {
      const r = await ensurePipelineConsumer(bus, c.connection, name, ackWaitMs, after);
      if (r.migratedFrom) migrated.add(r.migratedFrom);
    }
  }
  for (const name of migrated) {
    if (stillNeeded.has(name)) continue;
    await bus.jsm.consumers
      .delete(STREAM, name)
      .catch((e) => log.warn("old pipeline consumer not deleted", { consumer: name, error: String(e) }));
  }
}

export class PipelineManager {
  readonly workers = new Map<string, PipelineWorker | ExportWorker>();
  readonly #signatures = new Map<string, string>();
  #applying: Promise<void> = Promise.resolve();
  #stages?: StageFactory;
  /** The model the users table has now. */
  #model?: CustomerModel;
  /** Why the last configuration could not be applied in full, one line per problem. */
  lastError?: string;
  #problems: string[] = [];

  constructor(
    readonly bus: Bus,
    readonly warehouse: Warehouse,
    readonly batch: BatchOptions = batchDefaults,
    readonly inserter?: InserterOptions,
    /** Per-event outcomes for the debugger; undefined when the admin API is off. */
    readonly outcomes?: OutcomeRecorder,
  ) {}

  /** Counts and consumer lag of every pipeline running on this node (GET /v1/pipelines, /metrics). */
  async snapshots(): Promise<PipelineSnapshot[]> {
    return Promise.all(
      [...this.workers.values()].map(async (w) => {
        const [lag, letters] = await Promise.all([
          pipelineLag(this.bus, w.connection, w.pipeline).catch(() => null),
          deadLetterCounts(this.bus, w.connection),
        ]);
        const s = w.stats;
        const snapshot: PipelineSnapshot = {
          connection: w.connection,
          pipeline: w.pipeline,
          import: w.stage.kind,
          received: s.received,
          filteredOut: s.filteredOut,
          consentFailed: s.consentFailed,
          transformed: s.transformed,
          failed: s.failed,
          loaded: s.loaded,
          deadLettered: s.deadLettered,
          forgotten: s.forgotten,
          deadLetters: letters[dlqSubject(w.connection, w.pipeline)] ?? 0,
          lag,
          lastLoadAt: s.lastLoadAt ?? null,
          lastErrors: [...s.lastErrors],
        };
        if (w instanceof ExportWorker)
          snapshot.export = {
            destination: describeDestination(w.destination),
            role: w.active ? "active" : "standby",
            ...w.exportStats.snapshot(),
          };
        return snapshot;
      }),
    );
  }

  #applied = false;

  /**
   * Serialised, so quick successive reloads apply in order. The stream's position is read now,
   * not when the apply gets its turn: a pipeline this configuration adds gets every event from the
   * moment it was loaded, however long earlier pipelines take to start. The first configuration is
   * the one the node started with: its pipelines start where the node connected, before it answered.
   */
  apply(config: Config): Promise<void> {
    const first = !this.#applied;
    this.#applied = true;
    const after =
      first && this.bus.startSeq !== undefined
        ? Promise.resolve(this.bus.startSeq)
        : streamPositions(this.bus.jsm, this.bus.layout);
    after.catch(() => {}); // awaited in its turn
    this.#applying = this.#applying
      .then(() => this.#apply(config, after))
      .catch((e) => {
        this.lastError = String((e as Error).message ?? e);
        log.error("applying pipelines failed", { error: this.lastError });
      });
    return this.#applying;
  }

  async #apply(config: Config, startAfter: Promise<StreamPositions>): Promise<void> {
    this.#problems = [];
    const usersWanted = [...config.connections.values()].some((c) =>
      c.pipelines?.some((p) => p.import === "users" && p.enabled !== false),
    );
    let model = this.#model;
    if (usersWanted || Object.keys(config.customerModel).length) {
      try {
        const alters = await migrateUsersTable(this.warehouse, config.customerModel, config.customerModelMigrate);
        if (alters.length) log.info("users table migrated", { changes: alters.length });
        model = config.customerModel;
      } catch (e) {
        // The last good model keeps running; the refusal is visible in logs and /v1/pipelines.
        this.#problems.push(String((e as Error).message ?? e));
        log.error("customer model not applied", { error: String((e as Error).message ?? e) });
      }
    }
    for (const { a, b, what, name } of nameCollisions(config))
      this.#problems.push(
        `pipeline "${b.pipeline}" of ${b.connection} (${b.file}) shares the ${what} ${name} with "${a.pipeline}" of ${a.connection} (${a.file}); only one runs`,
      );
    const wanted = new Map<string, Wanted>();
    for (const c of config.connections.values()) {
      if (c.source === "raw") {
        const table = c.table ?? c.connection;
        wanted.set(`${c.connection}/${RAW_PIPELINE}`, {
          connection: c.connection,
          pipeline: { name: RAW_PIPELINE, import: "events" },
          signature: `raw:${table}`,
          rawTable: table,
        });
      }
      for (const p of c.pipelines ?? []) {
        if (p.enabled === false) continue;
        if (p.import === "users" && !model) continue;
        const signature =
          p.import === "users"
            ? JSON.stringify([p.transform, model, rulesOf(config)])
            : p.export
              ? JSON.stringify(["export", p.transform, p.destination])
              : "events";
        wanted.set(`${c.connection}/${p.name}`, { connection: c.connection, pipeline: p, signature });
      }
    }
    for (const [key, w] of this.workers) {
      const want = wanted.get(key);
      if (!want || want.signature !== this.#signatures.get(key)) {
        await w.stop();
        this.workers.delete(key);
        this.#signatures.delete(key);
        log.info("pipeline stopped", { pipeline: key });
      }
    }
    // Every new pipeline's consumer first (fast), then the stages (a Python one takes seconds):
    // a pipeline still loading already has its position in the stream.
    const fresh = [...wanted].filter(([key]) => !this.workers.has(key));
    const failed = new Set<string>();
    let afterSeq: StreamPositions = 0;
    if (fresh.length) {
      try {
        afterSeq = await startAfter;
      } catch (e) {
        // The stream cannot be read: no new consumer now; the rest of the change still applies.
        for (const [key] of fresh) failed.add(key);
        this.#problems.push(
          `new pipelines not started: cannot read the events stream: ${String((e as Error).message ?? e)}`,
        );
      }
    }
    const migrated = new Set<string>();
    await Promise.all(
      fresh.map(async ([key, want]) => {
        if (failed.has(key)) return;
        try {
          const r = await ensurePipelineConsumer(
            this.bus,
            want.connection,
            want.pipeline.name,
            this.batch.ackWaitMs,
            afterSeq,
          );
          if (r.migratedFrom) migrated.add(r.migratedFrom);
        } catch (e) {
          failed.add(key);
          this.#problems.push(`pipeline ${key}: ${String((e as Error).message ?? e)}`);
          log.error("pipeline consumer not created", { pipeline: key, error: String((e as Error).message ?? e) });
        }
      }),
    );
    // An old-named consumer goes once every pipeline that read it has its own; one a disabled
    // pipeline may still need stays until that pipeline is enabled.
    const stillNeeded = new Set<string>();
    for (const c of config.connections.values())
      for (const p of c.pipelines ?? [])
        if (!wanted.has(`${c.connection}/${p.name}`)) stillNeeded.add(legacyConsumerName(c.connection, p.name));
    for (const name of migrated) {
      if (stillNeeded.has(name)) continue;
      await this.bus.jsm.consumers
        .delete(STREAM, name)
        .catch((e) => log.warn("old pipeline consumer not deleted", { consumer: name, error: String(e) }));
    }
    for (const [key, want] of wanted) {
      const existing = this.workers.get(key);
      const filter = filterOf(selectedBy(want.pipeline));
      if (existing) {
        existing.setFilter(filter);
        existing.consents = want.pipeline.consents;
        continue;
      }
      if (failed.has(key)) continue;
      try {
        const stage = await this.#stage(want, model, rulesOf(config));
        const w = want.pipeline.export
          ? new ExportWorker(
              this.bus,
              want.connection,
              want.pipeline.name,
              filter,
              stage as ExportStage,
              resolveDestination(want.pipeline.destination!),
              this.batch,
            )
          : new PipelineWorker(
              this.bus,
              this.warehouse,
              want.connection,
              want.pipeline.name,
              filter,
              stage,
              this.batch,
              this.inserter,
            );
        w.consents = want.pipeline.consents;
        w.startAfterSeq = afterSeq;
        const outcomes = this.outcomes;
        if (outcomes) {
          w.stats.onOutcome = (id, outcome, reason) =>
            outcomes.record(want.connection, id, want.pipeline.name, outcome, reason);
          w.onLoaded = (ids) => outcomes.loaded(want.connection, want.pipeline.name, ids);
        }
        await w.start();
        this.workers.set(key, w);
        this.#signatures.set(key, want.signature);
        log.info("pipeline started", { pipeline: key });
      } catch (e) {
        this.#problems.push(`pipeline ${key}: ${String((e as Error).message ?? e)}`);
        log.error("pipeline not started", { pipeline: key, error: String((e as Error).message ?? e) });
      }
    }
    this.#model = model;
    this.lastError = this.#problems.length ? this.#problems.join("\n") : undefined;
  }

  #stage(want: Wanted, model: CustomerModel | undefined, rules: IdentityRules) {
    this.#stages ??= new StageFactory(this.bus, this.warehouse);
    return this.#stages.build(want.connection, want.pipeline, model, want.rawTable, rules);
  }

  async stop(): Promise<void> {
    await this.#applying;
    await Promise.all([...this.workers.values()].map((w) => w.stop()));
    this.workers.clear();
  }
}
