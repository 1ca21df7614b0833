import { expect, test } from "bun:test";
import { payloadOf } from "../../src/bus/shard-writer.ts";

const text = (p: Uint8Array | string) => (typeof p === "string" ? p : new TextDecoder().decode(p));

test("a message's body is the JSON array of its events, written once as bytes when they are ASCII", () => {
  const ascii = [JSON.stringify({ a: 1, s: "x\ny" }), JSON.stringify({ b: [1, 2] }), "{}"];
  const p = payloadOf(ascii);
  expect(p).toBeInstanceOf(Uint8Array);
  expect(text(p)).toBe(`[${ascii.join(",")}]`);
  expect((p as Uint8Array).length).toBe(`[${ascii.join(",")}]`.length);
  expect(text(payloadOf(["{}"]))).toBe("[{}]");
  expect(text(payloadOf([]))).toBe("[]");
});

test("an event that is not ASCII anywhere in the batch: the same text, as a string NATS encodes", () => {
  for (const odd of ["é", "€", "😀", "日本"]) {
    for (const at of [0, 1, 2]) {
      const jsons = ['{"a":1}', '{"b":2}', '{"c":3}'];
      jsons[at] = JSON.stringify({ t: odd });
      const p = payloadOf(jsons);
      expect(typeof p).toBe("string");
      expect(p).toBe(`[${jsons.join(",")}]`);
    }
  }
});
