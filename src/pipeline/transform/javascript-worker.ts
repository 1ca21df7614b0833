/**
 * Worker thread hosting one JavaScript transformation's QuickJS sandbox (see javascript.ts).
 * Progress goes to the parent through a SharedArrayBuffer, so the parent's watchdog can tell which
 * event is running and for how long without any message per event.
 */
import { BjsonWriter } from "./javascript-bjson.ts";
import type { FromWorker, ToWorker } from "./javascript-protocol.ts";
import type { EventsInput } from "./javascript-sandbox.ts";
import { SandboxHost } from "./javascript-sandbox-host.ts";

declare const self: Worker;

let host: SandboxHost | undefined;
let ints: Int32Array | undefined;
let floats: Float64Array | undefined;
let messageId = 0;

const progress = (i: number) => {
  ints![0] = i;
  ints![1] = messageId;
  floats![1] = Date.now();
};

const send = (m: FromWorker) => self.postMessage(m);

self.onmessage = async (e: MessageEvent<ToWorker>) => {
  const msg = e.data;
  if (msg.type === "init") {
    ints = new Int32Array(msg.progress, 0, 2);
    floats = new Float64Array(msg.progress, 0, 2);
    progress(-1);
    try {
      host = await SandboxHost.create(msg.source, msg.limits);
      send({ type: "ready", binary: host.binary, exactProgress: host.exactProgress });
    } catch (err) {
      const x = err as Error;
      send({ type: "loadError", message: x.message, config: x.name === "TransformLoadError" });
    }
    return;
  }
  const id = msg.id;
  messageId = id;
  try {
    if (!host) throw new Error("sandbox not initialised");
    const w = msg.input;
    const input: EventsInput = w.kind === "json" ? w : { kind: "bjson", ...BjsonWriter.slices(w) };
    const json = await host.runBatch(input, progress, (indices, json) => send({ type: "partial", id, indices, json }));
    send({ type: "results", id, json });
  } catch (err) {
    send({ type: "failed", id, message: (err as Error).message });
  }
};
