import { busOptionsOf, connectBus } from "../../bus/connection.ts";
import { ConfigStore } from "../../config/store.ts";
import type { OutcomeRecorder } from "../../event/outcome.ts";
import { setExpressionTimeLimit } from "../../expr/index.ts";
import { registry } from "../../util/metrics-registry.ts";
import { log } from "../../util/log.ts";
import type { Call, FromWorker, Init, OutcomeBatch, ToWorker } from "./protocol.ts";
import { PipelineRuntime } from "./runtime.ts";

/**
 * A pipeline worker process: `bun src/pipeline/host/child.ts`, started and restarted by the node
 * (PipelineSupervisor). It runs the node's pipelines for its share of the connections with its own
 * NATS and ClickHouse connections, so a slow insert, a 50k-row flush or a runaway transform costs
 * this process's CPU, never the node's HTTP answers.
 */
const send = (m: FromWorker) => process.send!(m);

/** Per-event outcomes go to the node in batches: one IPC message per event would cost more than the event. */
class OutcomeForwarder implements OutcomeRecorder {
  #batch: OutcomeBatch = { type: "outcomes", records: [], loaded: [] };
  #timer?: Timer;
  record(...r: OutcomeBatch["records"][number]) {
    this.#batch.records.push(r);
    this.#schedule();
  }
  loaded(connection: string, pipeline: string, messageIds: string[]) {
    this.#batch.loaded.push([connection, pipeline, messageIds]);
    this.#schedule();
  }
  #schedule() {
    if (this.#batch.records.length >= 2000) this.flush();
    else this.#timer ??= setTimeout(() => this.flush(), 50);
  }
  flush() {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (!this.#batch.records.length && !this.#batch.loaded.length) return;
    send(this.#batch);
    this.#batch = { type: "outcomes", records: [], loaded: [] };
  }
}

let runtime: PipelineRuntime | undefined;
let started!: () => void;
/** Calls wait for the runtime to exist (they may come while NATS is still being reached). */
const constructed = new Promise<void>((r) => (started = r));
let config: ConfigStore | undefined;
let closeBus: (() => Promise<void>) | undefined;
const forwarder = new OutcomeForwarder();

async function init(m: Init) {
  setExpressionTimeLimit(m.expressionTimeoutMs);
  // Not watched: the node tells it when to reload, after it created the new pipelines' consumers
  // from the stream's position when it loaded the change (PipelineSupervisor.reload).
  config = new ConfigStore({ dir: m.pipelinesDir });
  const bus = await connectBus(busOptionsOf(m.bus, `tributary-pipelines-${m.runtime.share?.index ?? 0}`));
  if (m.startSeq !== undefined) bus.startSeq = m.startSeq;
  closeBus = () => bus.close();
  runtime = new PipelineRuntime(bus, config, m.runtime, m.outcomes ? forwarder : undefined);
  started();
  await runtime.ready;
  send({ type: "ready" });
}

async function call(m: Call): Promise<unknown> {
  await constructed;
  if (!runtime) throw new Error("pipeline worker not initialised");
  switch (m.method) {
    case "snapshots":
      return runtime.snapshots();
    case "lastError":
      return runtime.lastError();
    case "reload":
      return runtime.reload();
    case "warehouseUp":
      return runtime.warehouseUp();
    case "metrics":
      return registry.getMetricsAsJSON();
    case "replay":
      return runtime.replay(m.args as Parameters<PipelineRuntime["replay"]>[0], (progress) =>
        send({ type: "progress", id: m.id, progress }),
      );
    case "stop":
      await runtime.stop();
      forwarder.flush();
      config?.close();
      await closeBus?.();
      setTimeout(() => process.exit(0), 10);
      return runtime.snapshots();
  }
}

process.on("message", (m: ToWorker) => {
  if (m.type === "init") {
    init(m).catch((e) => {
      log.error("pipeline worker failed to start", { error: String((e as Error).message ?? e) });
      process.exit(1);
    });
    return;
  }
  call(m).then(
    (value) => send({ type: "result", id: m.id, value }),
    (e) => send({ type: "result", id: m.id, error: String((e as Error).message ?? e) }),
  );
});

// The node is gone (killed, or its IPC channel closed): a worker never outlives it.
process.on("disconnect", () => process.exit(0));
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.exit(0);
}, 1000).unref();
