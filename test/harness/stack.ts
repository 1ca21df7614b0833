import { afterAll, beforeAll } from "bun:test";
import type { ClickHouseClient } from "@clickhouse/client";
import { startClickHouse, startNats, startTestNode } from "./services.ts";
import { chClient } from "./warehouse.ts";
import type { PipelineTuning, RunningNode } from "../../src/node.ts";
import type { NodeOptions } from "../../src/config/env.ts";

export interface Stack {
  nats: Awaited<ReturnType<typeof startNats>>;
  ch: Awaited<ReturnType<typeof startClickHouse>>;
  node: RunningNode;
  db: ClickHouseClient;
}

/**
 * NATS, ClickHouse and a node with its pipelines running, for one test file: started before its
 * tests, stopped after. `prepare` runs against ClickHouse before the node starts.
 */
export function useStack(
  files: Record<string, string>,
  overrides: Partial<NodeOptions> & PipelineTuning = {},
  prepare?: (db: ClickHouseClient) => Promise<void>,
): Stack {
  const s = {} as Stack;
  beforeAll(async () => {
    [s.nats, s.ch] = await Promise.all([startNats(), startClickHouse()]);
    s.db = chClient(s.ch.url);
    await prepare?.(s.db);
    s.node = await startTestNode(s.nats.url, files, { clickhouseUrl: s.ch.url, batchMaxAgeMs: 100, ...overrides });
    await s.node.pipelinesReady;
  });
  afterAll(async () => {
    await s.node?.stop();
    await s.db?.close();
    await Promise.all([s.nats?.cleanup(), s.ch?.cleanup()]);
  });
  return s;
}
