import { describe, expect, test } from "bun:test";
import {
  applyIpPolicy,
  forwardedFor,
  formatIp,
  maskAddr,
  parseIp,
  resolveEventIp,
  socketIp,
  usableIp,
} from "../../src/ingest/ip.ts";

// Inputs from Krenalis's collector tests (krenalis/krenalis core/internal/collector/decoder_test.go,
// TestParseRemoteAddr and TestDecoderContextIPHandling), extended to IPv6 as PRODUCT.md §1 asks.

const canonical = (s: string) => {
  const r = usableIp(s);
  return "error" in r ? r.error : formatIp(r.addr);
};
const masked = (s: string, bits: number) => {
  const r = usableIp(s);
  if ("error" in r) throw new Error(r.error);
  return formatIp(maskAddr(r.addr, bits));
};

describe("parsing and masks (Krenalis TestParseRemoteAddr)", () => {
  test.each([
    // in, /32, /24, /16
    ["192.168.1.42", "192.168.1.42", "192.168.1.0", "192.168.0.0"],
    ["10.0.0.1", "10.0.0.1", "10.0.0.0", "10.0.0.0"],
    ["172.16.5.123", "172.16.5.123", "172.16.5.0", "172.16.0.0"],
    ["8.8.8.8", "8.8.8.8", "8.8.8.0", "8.8.0.0"],
    ["::ffff:192.0.2.1", "192.0.2.1", "192.0.2.0", "192.0.0.0"],
    ["0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0"],
    ["255.255.255.255", "255.255.255.255", "255.255.255.0", "255.255.0.0"],
    ["1.2.3.0", "1.2.3.0", "1.2.3.0", "1.2.0.0"],
    ["1.2.0.0", "1.2.0.0", "1.2.0.0", "1.2.0.0"],
  ])("%s → %s, /24 %s, /16 %s", (input, ip32, ip24, ip16) => {
    expect(canonical(input)).toBe(ip32);
    expect(masked(input, 24)).toBe(ip24);
    expect(masked(input, 16)).toBe(ip16);
  });

  test.each([
    "",
    "   ",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "-1.2.3.4",
    "1.2.3.-4",
    "abc.def.ghi.jkl",
    "1.2.3.4 ",
    " 1.2.3.4",
    "192.168.001.042",
    "1::2::3",
    "1:2:3:4:5:6:7:8:9",
    "12345::1",
    "::ffff:1.2.3",
    "g::1",
    ":1",
    "1:",
  ])("%j is malformed", (input) => {
    expect(parseIp(input)).toEqual({ error: "is not a valid IP address" });
  });

  test("IPv6: canonical RFC 5952 text, /48 and /32", () => {
    expect(canonical("2001:0DB8:0000:0000:0000:0000:0000:0001")).toBe("2001:db8::1");
    expect(canonical("2001:db8:0:0:1:0:0:1")).toBe("2001:db8::1:0:0:1");
    expect(canonical("::1")).toBe("::1");
    expect(canonical("::")).toBe("::");
    expect(canonical("2001:db8:85a3:1234:8a2e:370:7334:1")).toBe("2001:db8:85a3:1234:8a2e:370:7334:1");
    expect(masked("2001:db8:85a3:1234:8a2e:370:7334:1", 48)).toBe("2001:db8:85a3::");
    expect(masked("2001:db8:85a3:1234:8a2e:370:7334:1", 32)).toBe("2001:db8::");
  });

  test("IPv4-mapped addresses are unmapped, in either notation", () => {
    expect(canonical("::ffff:192.0.2.1")).toBe("192.0.2.1");
    expect(canonical("::FFFF:c000:0201")).toBe("192.0.2.1");
    expect(canonical("0:0:0:0:0:ffff:192.0.2.1")).toBe("192.0.2.1");
  });

  test("zoned and multicast addresses are refused", () => {
    expect(usableIp("fe80::1%eth0")).toEqual({ error: "is a zoned address" });
    expect(usableIp("fe80::1%25en0")).toEqual({ error: "is a zoned address" });
    expect(usableIp("224.0.0.1")).toEqual({ error: "is a multicast address" });
    expect(usableIp("239.255.255.250")).toEqual({ error: "is a multicast address" });
    expect(usableIp("ff02::1")).toEqual({ error: "is a multicast address" });
    expect(usableIp("::ffff:224.0.0.251")).toEqual({ error: "is a multicast address" });
  });
});

describe("context.ip special values (Krenalis TestDecoderContextIPHandling)", () => {
  const remote = "198.51.100.23";
  const remote6 = "2001:db8:85a3:1234:8a2e:370:7334:1";
  test.each([
    ["198.18.0.1", remote, "198.18.0.1"],
    ["0.0.0.0", remote, undefined],
    ["255.255.255.255", remote, remote],
    ["255.255.255.0", remote, "198.51.100.0"],
    ["255.255.0.0", remote, "198.51.0.0"],
    ["255.255.255.255", remote6, remote6],
    ["255.255.255.0", remote6, "2001:db8:85a3::"],
    ["255.255.0.0", remote6, "2001:db8::"],
    ["::ffff:255.255.255.0", remote, "198.51.100.0"],
    ["::ffff:0.0.0.0", remote, undefined],
    ["::ffff:203.0.113.7", remote, "203.0.113.7"],
    ["2001:DB8::7", remote, "2001:db8::7"],
    ["255.255.255.0", undefined, undefined],
  ])("%s with request address %s → %s", (sent, request, expected) => {
    expect(resolveEventIp(sent, request)).toEqual({ ip: expected });
  });

  test("malformed, zoned and multicast values are errors", () => {
    expect(resolveEventIp("300.1.1.1", remote)).toEqual({ error: "is not a valid IP address" });
    expect(resolveEventIp("fe80::1%eth0", remote)).toEqual({ error: "is a zoned address" });
    expect(resolveEventIp("224.0.0.1", remote)).toEqual({ error: "is a multicast address" });
    expect(resolveEventIp("ff02::1", remote)).toEqual({ error: "is a multicast address" });
  });
});

describe("connection ip setting", () => {
  test("keep, mask24 (/48 for IPv6) and drop", () => {
    expect(applyIpPolicy("198.51.100.23", undefined)).toBe("198.51.100.23");
    expect(applyIpPolicy("198.51.100.23", "keep")).toBe("198.51.100.23");
    expect(applyIpPolicy("198.51.100.23", "mask24")).toBe("198.51.100.0");
    expect(applyIpPolicy("2001:db8:85a3:1234::1", "mask24")).toBe("2001:db8:85a3::");
    expect(applyIpPolicy("198.51.100.23", "drop")).toBeUndefined();
    expect(applyIpPolicy(undefined, "mask24")).toBeUndefined();
  });
});

describe("X-Forwarded-For", () => {
  test.each([
    ["203.0.113.9", "203.0.113.9"],
    ["203.0.113.9:51234", "203.0.113.9"],
    ["[2001:db8::1]:443", "2001:db8::1"],
    ["[2001:db8::1]", "2001:db8::1"],
    ["2001:DB8::1", "2001:db8::1"],
    ["::ffff:203.0.113.9", "203.0.113.9"],
    ["[::ffff:203.0.113.9]:8080", "203.0.113.9"],
    [" 203.0.113.9 , 10.0.0.1, 10.0.0.2", "203.0.113.9"],
    ["[2001:db8::1]:443, 198.51.100.1:80", "2001:db8::1"],
  ])("%j → %s", (header, ip) => {
    expect(forwardedFor(header)).toEqual({ ip });
  });

  test.each([
    "unknown",
    "not-an-ip, 10.0.0.1",
    ", 10.0.0.1",
    "203.0.113.9:http",
    "203.0.113.9:70000",
    "[2001:db8::1",
    "[2001:db8::1]x",
    "[203.0.113.9]:80",
    "fe80::1%eth0",
    "224.0.0.1",
    "1.2.3.4:5:6",
  ])("%j is a malformed first hop, named in the error", (header) => {
    const r = forwardedFor(header);
    expect("error" in r && r.error).toStartWith("X-Forwarded-For: the first hop ");
  });

  test("socket addresses are canonical: dual-stack mapped addresses unmapped, zones dropped", () => {
    expect(socketIp("::ffff:127.0.0.1")).toBe("127.0.0.1");
    expect(socketIp("::1")).toBe("::1");
    expect(socketIp("fe80::1%eth0")).toBe("fe80::1");
    expect(socketIp(undefined)).toBeUndefined();
  });
});
