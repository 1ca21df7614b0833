import type { NatsConnection } from "@nats-io/nats-core";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { StreamLayout } from "./subjects.ts";
import { log } from "../util/log.ts";

/** Where each events stream's leader is ("" when it has none at the moment), and every server holding a replica. */
async function placement(
  jsm: JetStreamManager,
  layout: StreamLayout,
): Promise<{ leaders: Record<string, string>; servers: Set<string> }> {
  const leaders: Record<string, string> = {};
  const servers = new Set<string>();
  for (const name of layout.streams) {
    const c = (await jsm.streams.info(name)).cluster;
    leaders[name] = c?.leader ?? "";
    if (c?.leader) servers.add(c.leader);
    for (const r of c?.replicas ?? []) servers.add(r.name);
  }
  return { leaders, servers };
}

/**
 * Spreads the partition streams' leaders over the servers holding them: a server leading more than
 * its share (partitions ÷ servers, rounded up) is asked to step down from one of them, and the
 * stream elects another replica. nats-server 2.9 places a new stream's leader without regard to
 * the others' (all three partitions led by one server in 4 of 12 test runs), which would put every
 * write back through one server. A step-down pauses that partition's writes for its election (well
 * under a second when every replica is current), so it runs at a node's start, a bounded number
 * of times. Resolves to the leaders it leaves.
 */
export async function spreadLeaders(
  nc: NatsConnection,
  jsm: JetStreamManager,
  layout: StreamLayout,
  o: { attempts?: number; deadlineMs?: number } = {},
): Promise<Record<string, string>> {
  const first = await placement(jsm, layout);
  const servers = first.servers;
  let leaders = first.leaders;
  if (layout.partitions < 2 || servers.size < 2) return leaders;
  const share = Math.ceil(layout.partitions / servers.size);
  const deadline = Date.now() + (o.deadlineMs ?? 15_000);
  for (let i = 0; i < (o.attempts ?? 3 * layout.partitions) && Date.now() < deadline; i++) {
    const led = new Map<string, string[]>();
    for (const [stream, leader] of Object.entries(leaders)) led.set(leader, [...(led.get(leader) ?? []), stream]);
    const over = [...led.entries()].find(([leader, streams]) => leader && streams.length > share);
    if (!over) return leaders;
    const stream = over[1].at(-1)!;
    await nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 5000 }).catch(() => {});
    // Until the stream has a leader again.
    for (let t = 0; t < 40; t++) {
      await Bun.sleep(250);
      const now = (await jsm.streams.info(stream).catch(() => undefined))?.cluster?.leader;
      if (now) break;
    }
    leaders = (await placement(jsm, layout)).leaders;
  }
  log.warn("events streams' leaders still share a server", { leaders });
  return leaders;
}
