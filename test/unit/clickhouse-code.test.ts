import { expect, test } from "bun:test";
import { ClickHouseError } from "@clickhouse/client";
import { clickHouseCode } from "../../src/sink/clickhouse/server.ts";

test("a ClickHouse error's code: the client's typed code, or 18.16's leading `Code: N` it cannot parse", () => {
  expect(clickHouseCode(new ClickHouseError({ message: "Watching task is executing longer", code: "159" }))).toBe(159);
  expect(
    clickHouseCode(
      new Error(
        "Code: 159, e.displayText() = DB::Exception: Watching task /clickhouse/task_queue/ddl/query-0000000001 is executing longer than distributed_ddl_task_timeout (=20) seconds",
      ),
    ),
  ).toBe(159);
  // A code quoted inside another message (a query's text, a proxy page) is not the server's.
  expect(clickHouseCode(new Error("upstream said: Code: 159"))).toBeUndefined();
  expect(clickHouseCode(new Error("ECONNREFUSED"))).toBeUndefined();
});
