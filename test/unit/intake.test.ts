import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { gzipSync } from "node:zlib";
import { UnauthorizedError } from "../../src/ingest/auth.ts";
import {
  BadEncodingError,
  BodyAbortedError,
  BodyOverloadError,
  BodyRefusedError,
  BodyTimeoutError,
  PayloadTooLargeError,
  SMALL_BODY_BYTES,
} from "../../src/ingest/body.ts";
import { HttpError } from "../../src/ingest/http-error.ts";
import { Intake, type IntakeRequest, Reservation } from "../../src/ingest/intake.ts";
import { InFlightLimiter } from "../../src/ingest/overload.ts";

/** The one intake of every source: errors answer with their own status, and nothing stays reserved. */

const RETRY = 7;
const base: IntakeRequest = {
  limit: 1024,
  timeoutMs: 200,
  retryAfterSeconds: RETRY,
  failure: { message: "test failed" },
};

const post = (body: BodyInit | null, headers: Record<string, string> = {}) =>
  new Request("http://node.test/v1/batch", { method: "POST", body, headers, duplex: "half" } as RequestInit);

/** A body that sends `first` and then nothing more, ever (a stalled sender). */
const stalled = (first: Uint8Array = new Uint8Array([0x7b])) =>
  new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(first);
    },
  });

/** A body that sends a byte and then fails, as a sender that goes away mid-body. */
const aborted = () =>
  new ReadableStream<Uint8Array>({
    pull(c) {
      c.enqueue(new Uint8Array([0x7b]));
      c.error(new Error("connection reset"));
    },
  });

const ok = async () => new Response("ok");
const tooBig = "{".repeat(SMALL_BODY_BYTES + 1);

let lines: string[] = [];
const write = process.stderr.write.bind(process.stderr);
beforeEach(() => {
  lines = [];
  process.stderr.write = ((chunk: string | Uint8Array) => {
    lines.push(typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk));
    return true;
  }) as typeof process.stderr.write;
});
afterEach(() => {
  process.stderr.write = write;
});

describe("errors carry their answer", () => {
  test.each([
    ["PayloadTooLargeError", new PayloadTooLargeError(10), 413, "request body exceeds 10 bytes", {}],
    ["BadEncodingError", new BadEncodingError("body is not valid UTF-8"), 400, "body is not valid UTF-8", {}],
    [
      "BodyTimeoutError",
      new BodyTimeoutError(2000, 5),
      503,
      "request body not received within 2 s",
      { Connection: "close", "Retry-After": "5" },
    ],
    [
      "BodyAbortedError",
      new BodyAbortedError("request body ended early: x"),
      400,
      "request body ended early: x",
      { Connection: "close" },
    ],
    ["BodyOverloadError", new BodyOverloadError(), 429, "node overloaded; retry later", { "Retry-After": "1" }],
    ["BodyRefusedError", new BodyRefusedError(), 400, "body must be a JSON object", {}],
    [
      "UnauthorizedError",
      new UnauthorizedError(),
      401,
      "unauthorized: send a valid write key",
      { "WWW-Authenticate": 'Basic realm="tributary"' },
    ],
  ] as const)("%s", (_, e, status, message, headers) => {
    expect(e).toBeInstanceOf(HttpError);
    expect(e.status).toBe(status);
    expect(e.message).toBe(message);
    expect(e.headers).toEqual(headers);
    expect(e.code).toMatch(/^[A-Z_]+$/);
  });
});

describe("the intake answers each refusal with its error's status", () => {
  const intake = () => new Intake(new InFlightLimiter(1024 * 1024, 100));

  const answer = async (r: Response) => ({
    status: r.status,
    body: await r.json(),
    headers: Object.fromEntries(r.headers),
  });

  test("too large (declared, and found while inflating) → 413", async () => {
    // Declared: refused before a byte is read (bodies up to SMALL_BODY_BYTES are read in one piece, then bounded by the budget).
    const declared = await intake().text(post(tooBig, { "Content-Length": String(tooBig.length) }), base, ok);
    expect(await answer(declared)).toMatchObject({ status: 413, body: { error: "request body exceeds 1024 bytes" } });
    const inflated = await intake().text(post(gzipSync("{".repeat(5000)), { "Content-Encoding": "gzip" }), base, ok);
    expect(inflated.status).toBe(413);
  });

  test("an unknown Content-Encoding, a broken gzip, bytes that are not UTF-8 → 400", async () => {
    const br = await intake().text(post("{}", { "Content-Encoding": "br" }), base, ok);
    expect(await answer(br)).toMatchObject({
      status: 400,
      body: { error: 'unsupported Content-Encoding "br" (gzip and deflate are accepted)' },
    });
    const gz = await intake().bytes(post("not gzip", { "Content-Encoding": "gzip" }), base, ok);
    expect(gz.status).toBe(400);
    const latin1 = await intake().text(post(new Uint8Array([0x7b, 0xe9, 0x7d])), base, ok);
    expect(await answer(latin1)).toMatchObject({ status: 400, body: { error: "body is not valid UTF-8" } });
  });

  test("a body that never ends → 503 at the deadline, Retry-After from the source, the connection closed", async () => {
    const r = await answer(await intake().text(post(stalled()), base, ok));
    expect(r).toMatchObject({
      status: 503,
      body: { error: "request body not received within 0.2 s" },
      headers: { connection: "close", "retry-after": String(RETRY) },
    });
  });

  test("a sender gone mid-body → 400, the connection closed", async () => {
    const r = await answer(await intake().text(post(aborted()), base, ok));
    expect(r.status).toBe(400);
    expect(r.body.error).toStartWith("request body ended early:");
    expect(r.headers.connection).toBe("close");
  });

  test("over budget → 429 with Retry-After: 1, at the start or as the body grows", async () => {
    const budget = new InFlightLimiter(100, 1);
    const intake = new Intake(budget);
    const held = Reservation.take([budget], 10)!;
    const refused = await answer(await intake.text(post("{}"), base, ok));
    expect(refused).toEqual({
      status: 429,
      body: { error: "node overloaded; retry later" },
      headers: { "content-type": "application/json", "retry-after": "1" },
    });
    held.close();
    // Two requests in flight: the second may not grow past the byte budget.
    const small = new Intake(new InFlightLimiter(SMALL_BODY_BYTES + 1000, 10));
    const first = Reservation.take([small.budget], SMALL_BODY_BYTES)!;
    const big = "x".repeat(SMALL_BODY_BYTES * 2);
    const grown = await small.text(post(big), { ...base, limit: 1024 * 1024 }, ok);
    expect(grown.status).toBe(429);
    first.close();
  });

  test("a first byte refused → 400; a source rewords it (refine) and adds its headers to every refusal", async () => {
    const o = { ...base, firstByte: (b: number) => b === 0x7b };
    const plain = await answer(await intake().text(post("[1]"), o, ok));
    expect(plain).toMatchObject({ status: 400, body: { error: "body must be a JSON object" } });
    const reworded = await answer(
      await intake().text(
        post("[1]"),
        {
          ...o,
          refine: (e) => (e instanceof BodyRefusedError ? new UnauthorizedError() : e),
          refusalHeaders: () => ({ "Access-Control-Allow-Origin": "https://shop.example" }),
        },
        ok,
      ),
    );
    expect(reworded).toMatchObject({
      status: 401,
      body: { error: "unauthorized: send a valid write key" },
      headers: { "www-authenticate": 'Basic realm="tributary"', "access-control-allow-origin": "https://shop.example" },
    });
  });

  test("an HttpError thrown by the source is answered by its status; anything else is a logged 503", async () => {
    const thrown = await intake().text(post("{}"), base, () => {
      throw new PayloadTooLargeError(1, "too many events");
    });
    expect(await answer(thrown)).toMatchObject({ status: 413, body: { error: "too many events" } });
    const failed = await intake().text(
      post("{}"),
      { ...base, failure: { message: "webhook failed", fields: { connection: "shop" } } },
      () => {
        throw new TypeError("boom");
      },
    );
    expect(await answer(failed)).toMatchObject({
      status: 503,
      body: { error: "internal error; retry later" },
      headers: { "retry-after": String(RETRY) },
    });
    expect(lines.join("")).toContain("webhook failed");
    expect(lines.join("")).toContain("boom");
  });

  test("the source gets the body and the reservation", async () => {
    const r = await intake().bytes(post(gzipSync("hello"), { "Content-Encoding": "gzip" }), base, async (b, held) => {
      expect(held).toBeInstanceOf(Reservation);
      return new Response(new TextDecoder().decode(b));
    });
    expect(await r.text()).toBe("hello");
  });
});

describe("reservations are released on every path", () => {
  test("after requests that fail every way, and succeed, both budgets are back at zero", async () => {
    const budget = new InFlightLimiter(64 * 1024 * 1024, 4096);
    const keyless = new InFlightLimiter(16 * 1024 * 1024, 256);
    const intake = new Intake(budget);
    const o: IntakeRequest = { ...base, budgets: [keyless], firstByte: (b) => b === 0x7b };
    const paths: [string, () => Promise<Response>][] = [
      ["ok", () => intake.text(post("{}"), o, ok)],
      ["released early", () => intake.text(post("{}"), o, async (_, held) => (held.release(keyless), ok()))],
      ["413", () => intake.text(post(tooBig, { "Content-Length": String(tooBig.length) }), o, ok)],
      ["413 inflating", () => intake.text(post(gzipSync("{".repeat(5000)), { "Content-Encoding": "gzip" }), o, ok)],
      ["400 encoding", () => intake.text(post("{}", { "Content-Encoding": "br" }), o, ok)],
      ["400 utf-8", () => intake.text(post(new Uint8Array([0x7b, 0xff])), o, ok)],
      ["400 refused", () => intake.text(post("[]"), o, ok)],
      ["400 aborted", () => intake.text(post(aborted()), o, ok)],
      ["503 timeout", () => intake.text(post(stalled()), o, ok)],
      [
        "503 thrown",
        () =>
          intake.text(post("{}"), o, () => {
            throw new Error("boom");
          }),
      ],
      ["413 thrown", () => intake.text(post("{}"), o, () => Promise.reject(new PayloadTooLargeError(1)))],
    ];
    const N = 5;
    const statuses: Record<string, number[]> = {};
    await Promise.all(
      paths.flatMap(([name, run]) =>
        Array.from({ length: N }, async () => {
          const r = await run();
          (statuses[name] ??= []).push(r.status);
        }),
      ),
    );
    expect(Object.fromEntries(Object.entries(statuses).map(([k, v]) => [k, [...new Set(v)]]))).toEqual({
      ok: [200],
      "released early": [200],
      "413": [413],
      "413 inflating": [413],
      "400 encoding": [400],
      "400 utf-8": [400],
      "400 refused": [400],
      "400 aborted": [400],
      "503 timeout": [503],
      "503 thrown": [503],
      "413 thrown": [413],
    });
    for (const b of [budget, keyless]) {
      expect(b.inFlightBytes).toBe(0);
      expect(b.inFlightRequests).toBe(0);
    }
    expect(budget.rejected + keyless.rejected).toBe(0);
  });

  test("refused at the start: the budgets already taken are given back", async () => {
    const budget = new InFlightLimiter(1024, 1);
    const keyless = new InFlightLimiter(1024, 10);
    const blocker = Reservation.take([budget], 10)!;
    const intake = new Intake(budget);
    for (let i = 0; i < 3; i++)
      expect((await intake.text(post("{}"), { ...base, budgets: [keyless] }, ok)).status).toBe(429);
    expect(keyless.inFlightRequests).toBe(0);
    expect(keyless.inFlightBytes).toBe(0);
    blocker.close();
    blocker.close();
    expect(budget.inFlightRequests).toBe(0);
    expect(budget.inFlightBytes).toBe(0);
  });

  test("a stalled sender that declared 16 MiB holds at most SMALL_BODY_BYTES while it stalls", async () => {
    const budget = new InFlightLimiter(64 * 1024 * 1024, 10);
    const intake = new Intake(budget);
    const pending = intake.text(
      post(stalled(), { "Content-Length": String(16 * 1024 * 1024) }),
      { ...base, limit: 32 * 1024 * 1024 },
      ok,
    );
    await Bun.sleep(20);
    expect(budget.inFlightRequests).toBe(1);
    expect(budget.inFlightBytes).toBeLessThanOrEqual(SMALL_BODY_BYTES);
    expect((await pending).status).toBe(503);
    expect(budget.inFlightBytes).toBe(0);
  });
});
