// bench:capacity's output: a markdown report and one JSON line (bench/rounds.ts reads the JSON:
// arrays of objects are keyed there by their `name`).
import type { LoadResult } from "../loadgen.ts";
import type { Component } from "./proc.ts";
import type { StreamWrites, Varz } from "./nats.ts";
import type { Verification } from "./verify.ts";

export interface ReportInput {
  o: {
    rate: number;
    seconds: number;
    settleSeconds: number;
    batch: number;
    replicas: number;
    partitions: number;
    connections: number;
  };
  run: LoadResult;
  components: Component[];
  nats: Component;
  natsServers: { name: string; varz?: Varz; clients?: { in: number; out: number } }[];
  writes: StreamWrites[];
  expectedHighestShare: number;
  shardsPerStream: number[];
  consumerLeaders: { stream: string; name: string; leader: string }[];
  window: number;
  drainSeconds: number;
  maxLag: number;
  loadAverage: [string, string];
  eventJsonBytes: number;
  streamBytesPerEvent: number;
  storedMessages: number;
  storedBytes: number;
  chBytesPerRow: number;
  /** INSERT queries ClickHouse ran in the window (the pipelines' flushes). */
  chInserts: number;
  verification: Verification;
  distinct: { u: number; c: number };
  want: number;
  ok: boolean;
}

const MiB = 2 ** 20;
const f = (n: number, d = 0) =>
  (n ?? Number.NaN).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
const pct = (x: number) => `${f(x * 100, 1)} %`;

export function report(r: ReportInput): { markdown: string; json: unknown } {
  const { o, run } = r;
  const events = run.accepted;
  const us = (cpu: number) => (cpu / events) * 1e6; // CPU µs per event = CPU-s per million events
  const lines: string[] = [];
  lines.push(
    `Steady load: ${f(o.rate)} events/s offered for ${o.seconds} s (${o.batch} events per request, open loop, ` +
      `round-robin over ${o.connections} connection(s)), ${f(events)} accepted ` +
      `(${f(run.eventsPerSecond)} events/s, p50 ${f(run.p50, 1)} ms, p99 ${f(run.p99, 1)} ms); ` +
      `window ${f(r.window, 1)} s = load + ${f(r.drainSeconds, 1)} s until ClickHouse had them all + ${o.settleSeconds} s settle; ` +
      `pipeline backlog peaked at ${f(r.maxLag)} messages. Events average ${f(r.eventJsonBytes)} bytes of JSON. ` +
      `Events streams: ${o.partitions}, replicas: ${o.replicas}. Machine: ${navigator.hardwareConcurrency} cores, ` +
      `load average ${r.loadAverage[0]} before and ${r.loadAverage[1]} after (other work on the machine shows here).`,
  );
  lines.push("");
  lines.push(
    "| component | process | CPU-s in window | CPU µs per event (= CPU-s per 1M) | events/s per core | idle cores | peak RSS MiB (window) | VmHWM MiB |",
  );
  lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const c of r.components) {
    lines.push(
      `| ${c.name} | ${c.what} | ${f(c.cpu, 1)} | ${f(us(c.cpu), 1)} | ${f(events / c.cpu)} | ${f(c.idleCores, 3)} | ${f(c.peakRss / MiB)} | ${f(c.hwm / MiB)} |`,
    );
    const members = Object.entries(c.perMember);
    if (members.length > 1)
      for (const [label, cpu] of members)
        lines.push(`| ↳ ${label} | | ${f(cpu, 1)} | ${f(us(cpu), 1)} | ${f(events / cpu)} | | | |`);
    if (c.lost.length)
      lines.push(`| ↳ (gone before the end: ${c.lost.join(", ")}; their CPU is not counted) | | | | | | | |`);
  }
  const total = r.components.reduce((a, c) => a + c.cpu, 0);
  lines.push(`| all four | | ${f(total, 1)} | ${f(us(total), 1)} | ${f(events / total)} | | | |`);
  lines.push(`| (load generator) | bench/loadgen.ts | ${f(run.cpuSeconds, 1)} | ${f(us(run.cpuSeconds), 1)} | | | | |`);

  // ---- streams
  const highest = r.writes.reduce((a, w) => (w.byteShare > a.byteShare ? w : a), r.writes[0]!);
  const highestMessages = Math.max(...r.writes.map((w) => w.messageShare));
  lines.push("");
  lines.push(
    "| events stream | leader | shards on it | messages in window | MiB in window | ≈ events per message | share of messages | share of bytes |",
  );
  lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
  const totalShards = r.shardsPerStream.reduce((a, x) => a + x, 0);
  r.writes.forEach((w, k) => {
    const moved = w.leaderAtEnd !== w.leader ? ` → ${w.leaderAtEnd || "-"}` : "";
    const eventsOn = (events * w.byteShare) / Math.max(1, w.messages);
    lines.push(
      `| ${w.name} | ${w.leader || "-"}${moved} | ${r.shardsPerStream[k]} of ${totalShards} | ${f(w.messages)} | ${f(w.bytes / MiB, 1)} | ${f(eventsOn, 1)} | ${pct(w.messageShare)} | ${pct(w.byteShare)} |`,
    );
  });
  lines.push("");
  lines.push(
    `Highest stream's share of the writes: ${pct(highest.byteShare)} of the bytes (${highest.name}), ${pct(highestMessages)} of the messages; ` +
      `the hash of (connection, shard) puts ${Math.max(...r.shardsPerStream)} of the ${totalShards} shard subjects on the fullest stream, ` +
      `so an even load over the connections would give it ${pct(r.expectedHighestShare)}.`,
  );

  // ---- servers: leaders and followers
  const servers = r.natsServers.map((s) => {
    const leads = r.writes.filter((w) => w.leader === s.name);
    const cpu = r.nats.perMember[s.name] ?? 0;
    return {
      name: s.name,
      cpuSeconds: cpu,
      usPerEvent: us(cpu),
      eventsPerSecondPerCore: events / cpu,
      leads: leads.map((w) => w.name),
      ledByteShare: leads.reduce((a, w) => a + w.byteShare, 0),
      consumersLed: r.consumerLeaders.filter((c) => c.leader === s.name).length,
      inMiB: s.varz ? s.varz.inBytes / MiB : undefined,
      outMiB: s.varz ? s.varz.outBytes / MiB : undefined,
      clientInMiB: s.clients ? s.clients.in / MiB : undefined,
      clientOutMiB: s.clients ? s.clients.out / MiB : undefined,
      inMsgs: s.varz?.inMsgs,
      outMsgs: s.varz?.outMsgs,
    };
  });
  if (o.replicas > 1) {
    lines.push("");
    lines.push(
      "| nats-server | leads (at the start) | share of writes it leads | consumers it leads | CPU µs per event | events/s per core | MiB in / out (clients + routes) | of which clients: in / out |",
    );
    lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (const s of servers)
      lines.push(
        `| ${s.name} | ${s.leads.join(", ") || "–"} | ${pct(s.ledByteShare)} | ${s.consumersLed} of ${r.consumerLeaders.length} | ${f(s.usPerEvent, 1)} | ${f(s.eventsPerSecondPerCore)} | ${s.inMiB === undefined ? "?" : `${f(s.inMiB)} / ${f(s.outMiB!)}`} | ${s.clientInMiB === undefined ? "?" : `${f(s.clientInMiB)} / ${f(s.clientOutMiB!)}`} |`,
      );
    const mean = (xs: typeof servers) => xs.reduce((a, s) => a + s.usPerEvent, 0) / Math.max(1, xs.length);
    const leaders = servers.filter((s) => s.leads.length > 0);
    const followers = servers.filter((s) => s.leads.length === 0);
    lines.push("");
    lines.push(
      followers.length && leaders.length
        ? `Leaders vs followers: the server(s) leading a stream (${leaders.map((s) => s.name).join(", ")}) spent ${f(mean(leaders), 1)} CPU µs per event, ` +
            `the one(s) leading none (${followers.map((s) => s.name).join(", ")}) ${f(mean(followers), 1)}: ×${f(mean(leaders) / mean(followers), 2)}.`
        : `Leaders vs followers: every server leads a stream, so none is only a follower; per server ${servers.map((s) => `${s.name} ${f(s.usPerEvent, 1)}`).join(", ")} CPU µs per event ` +
            `(spread ×${f(Math.max(...servers.map((s) => s.usPerEvent)) / Math.min(...servers.map((s) => s.usPerEvent)), 2)}).`,
    );
  }

  // ---- storage and verification
  const v = r.verification;
  const perConn = Object.values(v.perConnection);
  lines.push("");
  lines.push(
    `Storage: ${f(r.streamBytesPerEvent)} bytes per event in the streams (per replica; ${f(r.storedMessages)} messages, ${f(r.storedBytes / MiB, 1)} MiB), ` +
      `so one hour of ClickHouse outage at 1,000 events/s needs ${f((r.streamBytesPerEvent * 1000 * 3600) / 2 ** 30, 2)} GiB of stream per replica; ` +
      `ClickHouse ran ${f(r.chInserts)} inserts in the window (${f(events / r.chInserts)} events each on average, ${f(((r.components.find((c) => c.name === "ClickHouse")?.cpu ?? 0) / r.chInserts) * 1e3, 1)} CPU-ms per insert) and keeps ${f(r.chBytesPerRow)} bytes per row on disk (compressed, after merges so far; the fixtures repeat three events, so real data compresses far less).`,
  );
  lines.push(
    `Verification (tributary.events FINAL, request by request, ${o.connections} connection(s): ${f(Math.min(...perConn))}–${f(Math.max(...perConn))} events each): ` +
      `${f(r.want)} events answered 2xx (warm-up included), ${f(v.missing)} missing, ${f(v.twice)} stored twice, ${f(v.misrouted)} under another connection` +
      `${v.extra ? `, ${f(v.extra)} stored though not answered 2xx (allowed)` : ""}; ${f(r.distinct.u)} distinct messageIds, ${f(r.distinct.c)} rows before FINAL: ` +
      `${r.ok ? "every accepted event is there exactly once" : v.answered2xx !== r.want ? "the 2xx answers do not add up (loadgen bug)" : "NOT EXACTLY ONCE"}.`,
  );

  const json = {
    rate: o.rate,
    seconds: o.seconds,
    batch: o.batch,
    replicas: o.replicas,
    partitions: o.partitions,
    connections: o.connections,
    accepted: events,
    eventsPerSecond: run.eventsPerSecond,
    p50: run.p50,
    p99: run.p99,
    window: r.window,
    drainSeconds: r.drainSeconds,
    maxLag: r.maxLag,
    eventJsonBytes: r.eventJsonBytes,
    streamBytesPerEvent: r.streamBytesPerEvent,
    chBytesPerRow: r.chBytesPerRow,
    chInserts: r.chInserts,
    chRowsPerInsert: events / r.chInserts,
    highestStreamByteShare: highest.byteShare,
    highestStreamMessageShare: highestMessages,
    expectedHighestShare: r.expectedHighestShare,
    streams: r.writes,
    natsServers: servers,
    components: r.components.map((c) => ({
      name: c.name,
      perMemberCpuSeconds: c.perMember,
      cpuSeconds: c.cpu,
      cpuSecondsPerMillion: us(c.cpu),
      eventsPerSecondPerCore: events / c.cpu,
      idleCores: c.idleCores,
      peakRssMiB: c.peakRss / MiB,
      hwmMiB: c.hwm / MiB,
      lost: c.lost,
    })),
    loadgenCpuSeconds: run.cpuSeconds,
    cores: navigator.hardwareConcurrency,
    loadAverage: r.loadAverage,
    verified: r.ok,
    missing: v.missing,
    storedTwice: v.twice,
    misrouted: v.misrouted,
    extra: v.extra,
    perConnection: v.perConnection,
  };
  return { markdown: lines.join("\n"), json };
}
