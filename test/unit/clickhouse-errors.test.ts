import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ClickHouseError } from "@clickhouse/client";
import {
  ClickHouseServerError,
  clickHouseCode,
  codeOfErrorText,
  errorOfResponse,
} from "../../src/sink/clickhouse/errors.ts";
import { JsonInsert } from "../../src/sink/clickhouse/http-insert.ts";
import { switchesServer } from "../../src/sink/clickhouse/server.ts";

const V18 =
  "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected { before: x: (at row 1)\n, e.what() = DB::Exception\n";
const V24 =
  "Code: 27. DB::Exception: Cannot parse input: expected '{' before: 'x': (at row 1)\n: While executing ParallelParsingBlockInputFormat. (INCORRECT_DATA) (version 24.3.2.23 (official build))\n";

describe("ClickHouse error codes, typed in one place", () => {
  test("the text form: 18.16's and 20+'s leading code, and nothing else", () => {
    expect(codeOfErrorText(V18)).toBe(27);
    expect(codeOfErrorText(V24)).toBe(27);
    expect(codeOfErrorText("  \nCode: 159, e.displayText() = DB::Exception: Watching task")).toBe(159);
    expect(codeOfErrorText("upstream said: Code: 159")).toBeUndefined();
    expect(codeOfErrorText("Code: x")).toBeUndefined();
    expect(codeOfErrorText("Code:159")).toBeUndefined();
    expect(codeOfErrorText("")).toBeUndefined();
  });

  test("from an error: ours, the client's, one shaped like the client's, or the text the client could not parse", () => {
    expect(clickHouseCode(new ClickHouseServerError("x", 242))).toBe(242);
    expect(clickHouseCode(new ClickHouseError({ message: "m", code: "241", type: "MEMORY_LIMIT_EXCEEDED" }))).toBe(241);
    expect(clickHouseCode(Object.assign(new Error("m"), { code: "6" }))).toBe(6);
    expect(clickHouseCode(new Error(V18))).toBe(27);
    // Node's own codes are words; a code quoted later in a message is not the server's.
    expect(clickHouseCode(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }))).toBeUndefined();
    expect(clickHouseCode(new Error("proxy: Code: 27"))).toBeUndefined();
    expect(clickHouseCode("Code: 27")).toBeUndefined();
    expect(clickHouseCode(undefined)).toBeUndefined();
  });

  test("from an HTTP answer: the X-ClickHouse-Exception-Code header first, then the text; a proxy's page has none", () => {
    const a = errorOfResponse(500, "27", V24);
    expect(a).toBeInstanceOf(ClickHouseServerError);
    expect([(a as ClickHouseServerError).code, (a as ClickHouseServerError).status]).toEqual([27, 500]);
    expect(a.message).toBe(V24.trim());
    expect(clickHouseCode(errorOfResponse(500, "241", "Code: 1. DB::Exception: other"))).toBe(241);
    expect(clickHouseCode(errorOfResponse(500, null, V18))).toBe(27);
    const proxy = errorOfResponse(502, null, "<html>Bad Gateway</html>");
    expect(clickHouseCode(proxy)).toBeUndefined();
    expect(proxy.message).toBe("ClickHouse answered HTTP 502: <html>Bad Gateway</html>");
    expect(switchesServer(proxy)).toBe(true);
    expect(switchesServer(errorOfResponse(500, "242", "Code: 242. DB::Exception: Table is in readonly mode"))).toBe(
      true,
    );
    expect(switchesServer(errorOfResponse(500, null, V18))).toBe(false);
  });
});

describe("JSONEachRow over fetch", () => {
  const seen: { url: URL; auth: string | null; body: string }[] = [];
  let answer: () => Response = () => new Response("");
  let server: ReturnType<typeof Bun.serve>;
  beforeAll(() => {
    server = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(req) {
        seen.push({ url: new URL(req.url), auth: req.headers.get("authorization"), body: await req.text() });
        return answer();
      },
    });
  });
  afterAll(() => server.stop(true));

  test("the request @clickhouse/client makes: the statement in `query`, one row a line, Basic auth, the URL's database", async () => {
    seen.length = 0;
    answer = () => new Response("");
    const plain = new JsonInsert({
      url: `http://127.0.0.1:${server.port}`,
      username: "u",
      password: "p",
      timeoutMs: 5000,
    });
    await plain.insert("`db`.`events`", [{ a: 1, s: "é\n" }, { a: 2 }]);
    expect(seen[0]!.url.pathname).toBe("/");
    expect([...seen[0]!.url.searchParams]).toEqual([["query", "INSERT INTO `db`.`events` FORMAT JSONEachRow"]]);
    expect(seen[0]!.auth).toBe(`Basic ${btoa("u:p")}`);
    expect(seen[0]!.body).toBe('{"a":1,"s":"é\\n"}\n{"a":2}\n');

    const inUrl = new JsonInsert({
      url: `http://ann:s%40cret@127.0.0.1:${server.port}/analytics`,
      username: "u",
      password: "p",
      timeoutMs: 5000,
    });
    await inUrl.insert("t", [{}]);
    expect(seen[1]!.auth).toBe(`Basic ${btoa("ann:s@cret")}`);
    expect(seen[1]!.url.pathname).toBe("/");
    expect(seen[1]!.url.searchParams.get("database")).toBe("analytics");
  });

  test("a refusal is a typed error with the server's code and text; the 18.16 text form too", async () => {
    const insert = new JsonInsert({
      url: `http://127.0.0.1:${server.port}`,
      username: "u",
      password: "",
      timeoutMs: 5000,
    });
    answer = () => new Response(V24, { status: 500, headers: { "X-ClickHouse-Exception-Code": "27" } });
    const e24 = await insert.insert("t", [{ a: "x" }]).catch((e) => e);
    expect(e24).toBeInstanceOf(ClickHouseServerError);
    expect([e24.code, e24.status, e24.message]).toEqual([27, 500, V24.trim()]);
    answer = () => new Response(V18, { status: 500 });
    expect(clickHouseCode(await insert.insert("t", [{ a: "x" }]).catch((e) => e))).toBe(27);
    answer = () => new Response("Bad Gateway", { status: 502 });
    const proxy = await insert.insert("t", [{ a: "x" }]).catch((e) => e);
    expect(proxy).toBeInstanceOf(Error);
    expect(clickHouseCode(proxy)).toBeUndefined();
  });

  test("only URLs the client would send to the same way; a server that does not answer times out", async () => {
    expect(JsonInsert.handles("http://ch:8123")).toBe(true);
    expect(JsonInsert.handles("https://u:p@ch:8443/db")).toBe(true);
    expect(JsonInsert.handles("http://ch:8123/?clickhouse_setting_async_insert=1")).toBe(false);
    expect(JsonInsert.handles("not a url")).toBe(false);
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const insert = new JsonInsert({
        url: `http://127.0.0.1:${silent.port}`,
        username: "u",
        password: "",
        timeoutMs: 200,
      });
      const e = await insert.insert("t", [{}]).catch((x) => x);
      expect((e as Error).name).toBe("TimeoutError");
      expect(clickHouseCode(e)).toBeUndefined();
    } finally {
      silent.stop(true);
    }
  });
});
