import { createHash } from "node:crypto";
import { nanos } from "@nats-io/nats-core";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import type { Bus } from "../bus/connection.ts";
import { consumerName } from "../bus/subjects.ts";
import type { Config } from "../config/loader.ts";
import type { Warehouse } from "../sink/clickhouse/server.ts";
import { clickHouseSink } from "../sink/clickhouse/sink.ts";
import { selectionOf } from "../event/selection.ts";
import { selectedBy } from "./export/selected-by.ts";
import { Runner } from "./runner.ts";
import { PipelineStats } from "./stats.ts";
import { StageFactory } from "./stages.ts";
import { rulesOf } from "./users/identity-rules.ts";
import { ExportStage } from "./export/stage.ts";
import { exportSink } from "./export/sink.ts";

export interface ReplayOptions {
  connection: string;
  pipeline: string;
  /** Start at the first message stored at or after this time (ISO 8601). */
  since?: string;
  /** Or at this stream sequence. Without either: the start of the stream. */
  fromSeq?: number;
  /** Only this partition's stream (required with `fromSeq` when there are several). */
  partition?: number;
  /** Stop at messages stored after this time. */
  until?: string;
  /** Count what would load; write nothing. */
  dryRun?: boolean;
  /** Events per insert. */
  batchRows?: number;
  onProgress?: (p: ReplayProgress) => void;
  signal?: AbortSignal;
}

export interface ReplayProgress {
  /** Stream sequences covered so far, of `total`. */
  done: number;
  total: number;
  received: number;
  kept: number;
  loaded: number;
  failed: number;
  eventsPerSecond: number;
  etaSeconds: number | null;
  finished: boolean;
  /** This run continued an interrupted replay with the same arguments. */
  resumed: boolean;
}

export class ReplayError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ReplayError";
  }
}

/**
 * Re-runs a pipeline — its current filter, consents and transformation — over events still in the
 * stream, into the same table (an export pipeline: to its destination, each user's events in stream
 * order), through the live pipelines' Runner and sink: rows ClickHouse refuses
 * are dead-lettered exactly as the live pipeline does. Exactly once as seen by queries: events rows collapse on
 * (connection, pipeline, message_id) under FINAL, and users profiles merge by event time, so a
 * replay over rows already loaded changes nothing.
 * It reads with a durable consumer of its own (the pipeline's live consumer is not touched),
 * acknowledged batch by batch, so an interrupted replay resumes where it stopped when rerun.
 */
export async function replay(
  bus: Bus,
  warehouse: Warehouse,
  config: Config,
  o: ReplayOptions,
): Promise<ReplayProgress> {
  const c = config.connections.get(o.connection);
  if (!c) throw new ReplayError(`no connection named "${o.connection}"`);
  const p = c.pipelines?.find((x) => x.name === o.pipeline);
  if (!p)
    throw new ReplayError(
      `connection "${o.connection}" has no pipeline named "${o.pipeline}" (it has: ${(c.pipelines ?? []).map((x) => x.name).join(", ") || "none"})`,
    );
  // The identifier rules live pipelines resolve with, so a replayed users pipeline merges alike.
  const stage = await new StageFactory(bus, warehouse).build(
    c.connection,
    p,
    config.customerModel,
    undefined,
    rulesOf(config),
  );
  const stats = new PipelineStats();
  const selection = selectionOf(selectedBy(p), stage.takes);
  const until = o.until ? Date.parse(o.until) : undefined;
  if (o.since && Number.isNaN(Date.parse(o.since))) throw new ReplayError(`--since: not an ISO 8601 time: ${o.since}`);
  if (o.until && Number.isNaN(until)) throw new ReplayError(`--until: not an ISO 8601 time: ${o.until}`);

  if (o.fromSeq !== undefined && bus.layout.partitions > 1 && o.partition === undefined)
    throw new ReplayError(
      `--from-seq: with ${bus.layout.partitions} stream partitions a sequence is one partition's: add --partition <k> (0–${bus.layout.partitions - 1}), or use --since`,
    );
  if (o.partition !== undefined && !bus.layout.partitionsOf(c.connection).includes(o.partition))
    throw new ReplayError(
      `--partition ${o.partition}: connection "${c.connection}" is stored in partition(s) ${bus.layout.partitionsOf(c.connection).join(", ")}`,
    );
  // A durable consumer per partition named after the replay's arguments: rerunning the same replay
  // after an interruption resumes after the last batch it loaded; each is deleted once its
  // partition is done. consumerName is injective over (connection, pipeline); a fixed prefix and a
  // fixed-length hash keep it so.
  const args = createHash("sha256")
    .update(JSON.stringify([o.since, o.fromSeq, o.until]))
    .digest("hex")
    .slice(0, 8);
  const name = consumerName(c.connection, p.name).replace(/^tributary-/, `tributary-replay-${args}-`);
  const parts: { k: number; stream: string; first: number; last: number; resumed: boolean }[] = [];
  for (const k of o.partition !== undefined ? [o.partition] : bus.layout.partitionsOf(c.connection)) {
    const stream = bus.layout.streams[k]!;
    const info = await bus.jsm.streams.info(stream);
    const existing = await bus.jsm.consumers.info(stream, name).catch(() => undefined);
    // Resume after the ack floor: batches are acknowledged in order, so everything up to it is loaded.
    // The old consumer is replaced rather than reused, because the messages it handed to the
    // interrupted run would only come back after their ack wait.
    const resumeAt = existing && existing.ack_floor.stream_seq > 0 ? existing.ack_floor.stream_seq + 1 : undefined;
    if (existing) await bus.jsm.consumers.delete(stream, name);
    const first = resumeAt ?? o.fromSeq ?? info.state.first_seq;
    await bus.jsm.consumers.add(stream, {
      durable_name: name,
      filter_subject: bus.layout.consumerFilter(c.connection, k),
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(120_000),
      max_ack_pending: 50_000,
      inactive_threshold: nanos(7 * 86400_000),
      ...(o.since && resumeAt === undefined
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(o.since).toISOString() }
        : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.max(1, first) }),
    });
    parts.push({ k, stream, first, last: info.state.last_seq, resumed: !!existing });
  }
  const started = performance.now();
  const progress: ReplayProgress = {
    done: 0,
    total: parts.reduce((n, x) => n + Math.max(0, x.last - x.first + 1), 0),
    received: 0,
    kept: 0,
    loaded: 0,
    failed: 0,
    eventsPerSecond: 0,
    etaSeconds: null,
    finished: false,
    resumed: parts.some((x) => x.resumed),
  };
  /** Sequences covered by the partitions replayed before this one. */
  let doneBefore = 0;
  const report = (seq: number, first: number, last: number) => {
    const s = (performance.now() - started) / 1000;
    const here = Math.max(0, Math.min(last - first + 1, seq - first + 1));
    progress.done = Math.min(progress.total, doneBefore + here);
    progress.received = stats.received;
    progress.failed = stats.failed;
    progress.eventsPerSecond = s > 0 ? stats.received / s : 0;
    const rate = s > 0 ? progress.done / s : 0;
    progress.etaSeconds = rate > 0 ? (progress.total - progress.done) / rate : null;
    o.onProgress?.({ ...progress });
  };

  // An export pipeline re-sends to its destination: the same messageIds, and the same
  // Idempotency-Keys for batches grouped as before (always, with maxEvents: 1).
  const deadLetters = { bus, connection: c.connection, pipeline: p.name };
  const rows = o.batchRows ?? 10_000;
  const batch = { maxRows: rows, maxBytes: Number.POSITIVE_INFINITY, maxAgeMs: Number.POSITIVE_INFINITY };
  const sink =
    stage instanceof ExportStage
      ? exportSink(stage.destination, { deadLetters })
      : clickHouseSink(warehouse, stage.table, { batch, deadLetters });
  // A destination that is down is retried for ever: Ctrl-C leaves the batch for the next run.
  if (stage instanceof ExportStage) o.signal?.addEventListener("abort", () => sink.stop());
  let failure: unknown;
  const runner = new Runner(stage, sink, selection, stats, {
    stageBatch: batch,
    heartbeatMs: 40_000, // a third of the ack wait
    // Awaited: a rerun resumes after the ack floor, so it must be where the loaded messages end.
    ack: (m) => m.ackAck().then(() => {}),
    // A dry run acknowledges nothing: it leaves no trace to resume from.
    dryRun: o.dryRun,
    onFlushError: (e) => {
      failure ??= e;
    },
  });
  runner.onFlushed = (kept, written) => {
    progress.kept += kept;
    progress.loaded += written;
  };
  let complete = true;
  try {
    // One partition after the other: each in its stream's order (an export's users keep theirs).
    for (const part of parts) {
      let done = part.last < part.first;
      if (!done) {
        const consumer = await bus.js.consumers.get(part.stream, name);
        const messages = await consumer.consume({ max_bytes: 8 * 1024 * 1024 });
        const abort = () => void messages.close();
        o.signal?.addEventListener("abort", abort);
        await runner.run(messages, {
          // Messages already buffered are left unacknowledged: a rerun gets them again.
          stopBefore: (m) => {
            if (o.signal?.aborted || failure !== undefined) return true;
            if (until !== undefined && m.info.timestampNanos / 1e6 > until) done = true;
            return done;
          },
          isLast: (m) => {
            if (m.seq >= part.last || m.info.pending === 0) done = true;
            return done;
          },
          after: (m) => report(m.seq, part.first, part.last),
        });
        o.signal?.removeEventListener("abort", abort);
        await messages.close();
      }
      if (!o.signal?.aborted && failure === undefined) await runner.flush();
      if (failure !== undefined) throw failure;
      if (!done || o.signal?.aborted) {
        complete = false;
        break;
      }
      report(part.last, part.first, part.last);
      doneBefore += Math.max(0, part.last - part.first + 1);
      if (!o.dryRun) await bus.jsm.consumers.delete(part.stream, name).catch(() => {});
    }
  } finally {
    if (stage instanceof ExportStage) sink.stop();
    stage.dispose?.();
    if (o.dryRun) for (const part of parts) await bus.jsm.consumers.delete(part.stream, name).catch(() => {});
  }
  progress.finished = complete && !o.signal?.aborted;
  if (progress.finished) {
    progress.done = progress.total;
    o.onProgress?.({ ...progress });
  }
  return progress;
}
