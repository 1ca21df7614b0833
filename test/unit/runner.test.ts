import { afterAll, describe, expect, test } from "bun:test";
import type { JsMsg } from "@nats-io/jetstream";
import type { Bus } from "../../src/bus/connection.ts";
import { resolveDestination } from "../../src/config/destination.ts";
import { selectionOf } from "../../src/event/selection.ts";
import { eventsStage } from "../../src/pipeline/events-stage.ts";
import { exportSink } from "../../src/pipeline/export/sink.ts";
import { ExportStage } from "../../src/pipeline/export/stage.ts";
import { Runner, type RunnerOptions } from "../../src/pipeline/runner.ts";
import type { Stage } from "../../src/pipeline/stage.ts";
import { PipelineStats } from "../../src/pipeline/stats.ts";
import { ClickHouseServerError } from "../../src/sink/clickhouse/errors.ts";
import { featuresOf, type Warehouse } from "../../src/sink/clickhouse/server.ts";
import { type ClickHouseBatchOptions, clickHouseSink } from "../../src/sink/clickhouse/sink.ts";
import type { Sink } from "../../src/sink/sink.ts";

// The one Runner with both sinks, without a server: stream messages are stand-ins that record
// their acknowledgements, ClickHouse is a Warehouse whose inserts the test holds or refuses, the
// HTTP destination a local receiver, and dead letters go to a bus stand-in that records them. What
// happens is written to one log, so the order of inserts, dead letters and acknowledgements shows.

type Json = Record<string, unknown>;

let log: string[] = [];
const letters: Json[] = [];
const bus = {
  js: {
    publish: async (_subject: string, data: string) => {
      await Bun.sleep(5); // a publish takes a while: an acknowledgement must wait for it
      const l = JSON.parse(data) as Json;
      letters.push(l);
      log.push(`letter:${l.messageId}`);
    },
  },
} as unknown as Bus;

const event = (id: string, extra: Json = {}): Json => ({
  type: "track",
  event: "E",
  userId: `user-${id}`,
  messageId: id,
  receivedAt: "2026-01-01T00:00:00.000Z",
  timestamp: "2026-01-01T00:00:00.000Z",
  ...extra,
});

/** A stream message carrying `events`, recording its acknowledgement in the log. */
function message(seq: number, events: Json[]): JsMsg {
  const data = new TextEncoder().encode(JSON.stringify(events));
  const ack = () => log.push(`ack:${seq}`);
  return {
    seq,
    data,
    headers: undefined,
    info: { stream: "S", pending: 0, timestampNanos: 0 },
    json: () => JSON.parse(new TextDecoder().decode(data)),
    ack,
    ackAck: async () => (ack(), true),
    working: () => {},
  } as unknown as JsMsg;
}

/** Inserts wait for `open()`; a row whose `message_id` starts with "bad" is refused for its content. */
function gatedWarehouse() {
  let opened = false;
  const waiters: (() => void)[] = [];
  const inserts: string[][] = [];
  const w = {
    database: "db",
    features: featuresOf("24.3"),
    client: {} as never,
    close: async () => {},
    async insertRows(_table: string, rows: readonly Json[]) {
      if (!opened) await new Promise<void>((r) => waiters.push(r));
      if (rows.some((r) => String(r.message_id).startsWith("bad")))
        throw new ClickHouseServerError("Code: 53. DB::Exception: Type mismatch", 53);
      inserts.push(rows.map((r) => String(r.message_id)));
      log.push(`insert:${rows.map((r) => r.message_id).join(",")}`);
    },
  } as Warehouse;
  return {
    w,
    inserts,
    open() {
      opened = true;
      for (const r of waiters.splice(0)) r();
    },
  };
}

const live = (): RunnerOptions => ({ heartbeatMs: 0, ack: (m) => m.ack() });
const noAge: ClickHouseBatchOptions = { maxRows: 1000, maxBytes: 1 << 30, maxAgeMs: Number.POSITIVE_INFINITY };

function runner(stage: Stage, sink: Sink, options: RunnerOptions, filter?: string) {
  const stats = new PipelineStats();
  return {
    stats,
    runner: new Runner(stage, sink, selectionOf({ import: "events", filter }, "events"), stats, options),
  };
}

/** Messages as a consumer yields them. */
async function* stream(messages: JsMsg[]): AsyncIterable<JsMsg> {
  yield* messages;
}

describe("with the ClickHouse sink", () => {
  test("the sink batches several messages' rows; each message is acknowledged only once they are stored", async () => {
    log = [];
    const g = gatedWarehouse();
    const sink = clickHouseSink(g.w, "events", { batch: noAge });
    const { runner: r, stats } = runner(eventsStage("c", "p", g.w.features), sink, live());
    await r.run(stream([message(1, [event("a1"), event("a2")]), message(2, [event("b1")])]));
    r.flush();
    await Bun.sleep(50);
    expect(log).toEqual([]); // the insert is held: nothing acknowledged
    expect(r.pending).toBe(2);
    g.open();
    await r.flush();
    expect(g.inserts).toEqual([["a1", "a2", "b1"]]); // one insert for both messages
    expect(log).toEqual(["insert:a1,a2,b1", "ack:1", "ack:2"]);
    expect(stats.loaded).toBe(3);
    expect(r.pending).toBe(0);
  });

  test("a full batch goes at once and holds the loop until it is stored (back-pressure)", async () => {
    log = [];
    const g = gatedWarehouse();
    const sink = clickHouseSink(g.w, "events", { batch: { ...noAge, maxRows: 2 } });
    const { runner: r } = runner(eventsStage("c", "p", g.w.features), sink, live());
    let taken = 0;
    const running = r.run(stream([message(1, [event("a1"), event("a2")]), message(2, [event("b1")])]), {
      after: () => taken++,
    });
    await Bun.sleep(50);
    expect(taken).toBe(1); // the first message filled a batch: the second waits for its insert
    g.open();
    await running;
    expect(taken).toBe(2);
    await Bun.sleep(20);
    expect(log).toEqual(["insert:a1,a2", "ack:1"]); // the second's batch is not full and has no age
    await r.flush();
    expect(log).toEqual(["insert:a1,a2", "ack:1", "insert:b1", "ack:2"]);
  });

  test("a row ClickHouse refuses is dead-lettered with its reason, then its message acknowledged", async () => {
    log = [];
    letters.length = 0;
    const g = gatedWarehouse();
    g.open();
    const sink = clickHouseSink(g.w, "events", {
      batch: noAge,
      inserter: { initialBackoffMs: 1, maxBackoffMs: 1 },
      deadLetters: { bus, connection: "c", pipeline: "p" },
    });
    const { runner: r, stats } = runner(eventsStage("c", "p", g.w.features), sink, live());
    await r.run(
      stream([message(1, [event("a1")]), message(2, [event("bad1"), event("b2")]), message(3, [event("c1")])]),
    );
    await r.flush();
    // Bisection: the refused row alone, the rest stored; the letter before the acknowledgement.
    expect(log.indexOf("letter:bad1")).toBeLessThan(log.indexOf("ack:2"));
    expect(log.filter((x) => x.startsWith("ack:"))).toEqual(["ack:1", "ack:2", "ack:3"]);
    expect(g.inserts.flat().sort()).toEqual(["a1", "b2", "c1"]);
    expect(letters).toEqual([
      expect.objectContaining({ messageId: "bad1", reason: expect.stringContaining("Code: 53") }),
    ]);
    expect(stats).toMatchObject({ loaded: 3, deadLettered: 1, failed: 1 });
    expect(stats.lastErrors[0]).toMatchObject({
      messageId: "bad1",
      error: expect.stringContaining("ClickHouse refused"),
    });
  });

  test("one insert of several hand-overs tells each its own outcome", async () => {
    log = [];
    const g = gatedWarehouse();
    g.open();
    const sink = clickHouseSink(g.w, "events", { batch: noAge, inserter: { initialBackoffMs: 1, maxBackoffMs: 1 } });
    const first = sink.write([{ message_id: "a1" }, { message_id: "a2" }]);
    const second = sink.write([{ message_id: "bad1" }, { message_id: "b2" }]);
    sink.flush();
    expect(await first).toEqual({ written: 2, refused: [] });
    expect(await second).toMatchObject({ written: 1, refused: [{ row: { message_id: "bad1" } }] });
  });

  test("a message whose events were all filtered out is acknowledged in order with the rest", async () => {
    log = [];
    const g = gatedWarehouse();
    const sink = clickHouseSink(g.w, "events", { batch: noAge });
    const { runner: r, stats } = runner(eventsStage("c", "p", g.w.features), sink, live(), 'event != "drop"');
    await r.run(
      stream([
        message(1, [event("a1")]),
        message(2, [event("x1", { event: "drop" }), event("x2", { event: "drop" })]),
        message(3, [event("c1")]),
      ]),
    );
    r.flush();
    await Bun.sleep(50);
    expect(log).toEqual([]); // message 2 has nothing to store, yet waits for message 1
    g.open();
    await r.flush();
    expect(log.slice(0, 2)).toEqual(["insert:a1,c1", "ack:1"]);
    expect(log.slice(2).sort()).toEqual(["ack:2", "ack:3"]);
    expect(stats.filteredOut).toBe(2);
  });

  test("a stage that throws leaves its message unacknowledged; the others are acknowledged", async () => {
    log = [];
    const g = gatedWarehouse();
    g.open();
    const sink = clickHouseSink(g.w, "events", { batch: noAge });
    const base = eventsStage("c", "p", g.w.features);
    const stage: Stage = {
      ...base,
      toRows: (records, s) => {
        if (records.some((e) => e.messageId === "boom")) throw new Error("stage broke");
        return base.toRows(records, s);
      },
    };
    const errors: unknown[] = [];
    const { runner: r } = runner(stage, sink, { ...live(), onFlushError: (e) => errors.push(e) });
    await r.run(stream([message(1, [event("a1")]), message(2, [event("boom")]), message(3, [event("c1")])]));
    await r.flush();
    expect(log.filter((x) => x.startsWith("ack:"))).toEqual(["ack:1", "ack:3"]);
    expect(errors.map(String)).toEqual(["Error: stage broke"]);
    expect(r.pending).toBe(0);
  });

  test("stopping while ClickHouse is away leaves the held messages unacknowledged", async () => {
    log = [];
    const g = gatedWarehouse();
    const failing = { ...g.w, insertRows: async () => Promise.reject(new Error("connection refused")) } as Warehouse;
    const sink = clickHouseSink(failing, "events", {
      batch: noAge,
      inserter: { initialBackoffMs: 5, maxBackoffMs: 5 },
    });
    const errors: unknown[] = [];
    const { runner: r } = runner(eventsStage("c", "p", g.w.features), sink, {
      ...live(),
      onFlushError: (e) => errors.push(e),
    });
    await r.stop(100, r.run(stream([message(1, [event("a1")]), message(2, [event("b1")])])));
    expect(log).toEqual([]);
    expect(errors).toHaveLength(2);
    expect(r.pending).toBe(0);
  });
});

describe("with an HTTP destination", () => {
  const bodies: Json[][] = [];
  /** 400 for a batch holding an event named "refuse", else 200 after `delay` ms for user-slow. */
  const server = Bun.serve({
    port: 0,
    async fetch(req) {
      const events = (await req.json()) as Json[];
      bodies.push(events);
      if (events.some((e) => e.event === "refuse")) return new Response("no", { status: 400 });
      if (events.some((e) => e.userId === "user-slow")) await Bun.sleep(300);
      for (const e of events) log.push(`sent:${e.messageId}`);
      return new Response("ok");
    },
  });
  afterAll(() => server.stop(true));
  const destination = () =>
    resolveDestination({
      type: "webhook",
      url: `http://127.0.0.1:${server.port}/in`,
      // One event per request: a user's refusal or slowness is its own.
      batch: { maxEvents: 1, maxAgeMs: 5 },
      retry: { initialBackoffMs: 5, maxBackoffMs: 10 },
    });
  const exportRunner = (options: RunnerOptions, filter?: string) => {
    const d = destination();
    const sink = exportSink(d, { deadLetters: { bus, connection: "c", pipeline: "p" } });
    return { sink, ...runner(new ExportStage("c", "p", d, "webhook:test"), sink, options, filter) };
  };

  test("a message is acknowledged once its events are 2xx'd, whatever order messages finish in", async () => {
    log = [];
    const { runner: r, stats } = exportRunner(live());
    await r.run(stream([message(1, [event("s1", { userId: "user-slow" })]), message(2, [event("f1")])]));
    await r.flush();
    expect(log).toEqual(["sent:f1", "ack:2", "sent:s1", "ack:1"]);
    expect(stats.loaded).toBe(2);
  });

  test("an event the destination refuses is dead-lettered, then its message acknowledged; filtered-out messages in order", async () => {
    log = [];
    letters.length = 0;
    const { runner: r, stats } = exportRunner(live(), 'event != "drop"');
    await r.run(
      stream([
        message(1, [event("r1", { event: "refuse" })]),
        message(2, [event("d1", { event: "drop" })]),
        message(3, [event("ok1")]),
      ]),
    );
    await r.flush();
    expect(log.indexOf("letter:r1")).toBeLessThan(log.indexOf("ack:1"));
    expect(log.indexOf("ack:1")).toBeLessThan(log.indexOf("ack:2")); // filtered out: after message 1
    expect(log.filter((x) => x.startsWith("ack:")).sort()).toEqual(["ack:1", "ack:2", "ack:3"]);
    expect(letters).toEqual([expect.objectContaining({ kind: "export", messageId: "r1", status: 400 })]);
    expect(stats).toMatchObject({ loaded: 1, deadLettered: 1, filteredOut: 1 });
    expect(stats.lastErrors[0]!.error).toContain("the destination refused the event: HTTP 400");
  });

  test("nothing is acknowledged while the destination holds the events; stop leaves them for redelivery", async () => {
    log = [];
    const { runner: r } = exportRunner({ ...live(), onFlushError: () => {} });
    const running = r.run(stream([message(1, [event("s2", { userId: "user-slow" })])]));
    await running;
    expect(r.pending).toBe(1);
    await r.stop(10, running); // the request takes 300 ms: the grace ends first
    expect(log.filter((x) => x.startsWith("ack:"))).toEqual([]);
    expect(r.pending).toBe(0);
  });
});

describe("a replay and a live pipeline", () => {
  /** The same messages through a runner configured as the live worker is, and as a replay is. */
  async function both(make: () => { stage: Stage; sink: Sink }, messages: () => JsMsg[]) {
    const outcomes = [];
    for (const kind of ["live", "replay"] as const) {
      log = [];
      letters.length = 0;
      const { stage, sink } = make();
      const options: RunnerOptions =
        kind === "live"
          ? { heartbeatMs: 0, ack: (m) => m.ack() }
          : { heartbeatMs: 0, ack: (m) => m.ackAck().then(() => {}), stageBatch: noAge };
      const { runner: r, stats } = runner(stage, sink, options);
      await r.run(stream(messages()));
      await r.flush();
      outcomes.push({
        acks: log.filter((x) => x.startsWith("ack:")).sort(),
        letters: letters.map((l) => ({ messageId: l.messageId, reason: l.reason })),
        stats: { loaded: stats.loaded, deadLettered: stats.deadLettered, failed: stats.failed },
        errors: stats.lastErrors.map((e) => [e.messageId, e.error]),
      });
    }
    expect(outcomes[1]).toEqual(outcomes[0]!);
    return outcomes[0]!;
  }
  const messages = () => [message(1, [event("a1"), event("bad2")]), message(2, [event("b1")])];

  test("treat rows ClickHouse refuses the same", async () => {
    const out = await both(() => {
      const g = gatedWarehouse();
      g.open();
      const batch = { ...noAge, maxAgeMs: 5 };
      const sink = clickHouseSink(g.w, "events", { batch, deadLetters: { bus, connection: "c", pipeline: "p" } });
      return { stage: eventsStage("c", "p", g.w.features), sink };
    }, messages);
    expect(out.stats).toEqual({ loaded: 2, deadLettered: 1, failed: 1 });
    expect(out.acks).toEqual(["ack:1", "ack:2"]);
  });

  test("treat events the destination refuses the same", async () => {
    const out = await both(() => {
      const d = resolveDestination({
        type: "webhook",
        url: "http://127.0.0.1:1/unused",
        batch: { maxEvents: 1, maxAgeMs: 5 },
      });
      const sink = exportSink(
        { ...d, url: `http://127.0.0.1:${refusing.port}/in` },
        {
          deadLetters: { bus, connection: "c", pipeline: "p" },
        },
      );
      return { stage: new ExportStage("c", "p", d, "webhook:test"), sink };
    }, messages);
    expect(out.stats).toEqual({ loaded: 2, deadLettered: 1, failed: 1 });
    expect(out.letters).toEqual([{ messageId: "bad2", reason: "HTTP 422: no" }]);
  });
  const refusing = Bun.serve({
    port: 0,
    async fetch(req) {
      const events = (await req.json()) as Json[];
      return events.some((e) => String(e.messageId).startsWith("bad"))
        ? new Response("no", { status: 422 })
        : new Response("ok");
    },
  });
  afterAll(() => refusing.stop(true));
});
