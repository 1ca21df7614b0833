/**
 * IP addresses on the ingestion path (PRODUCT.md §1 "Enrichment and privacy"): parsing without
 * ambiguity, canonical text, masks, `context.ip`'s special values and `X-Forwarded-For`.
 *
 * The special values and their meaning follow Krenalis's collector
 * (krenalis/krenalis core/internal/collector/decoder.go, `decodeEvent` and `parseRemoteAddr`):
 * `0.0.0.0` removes the address, `255.255.255.255` is the request's address, `255.255.255.0` and
 * `255.255.0.0` are the request's address masked to /24 and /16; IPv4-mapped addresses are
 * unmapped and multicast addresses are refused. Krenalis accepts IPv4 only; Tributary also takes
 * IPv6, where the two masks keep /48 and /32 (a site and an ISP allocation, the IPv6 analogues of
 * a /24 and a /16).
 */

export type Addr = { v: 4; bytes: Uint8Array } | { v: 6; bytes: Uint8Array };

const DEC_OCTET = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

function parse4(s: string): Uint8Array | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  const out = new Uint8Array(4);
  for (let i = 0; i < 4; i++) {
    // No leading zeros: "010" is octal to some parsers and decimal to others (Go's netip refuses it too).
    if (!DEC_OCTET.test(parts[i]!)) return undefined;
    out[i] = Number(parts[i]);
  }
  return out;
}

function parse6(s: string): Uint8Array | undefined {
  if (s.length < 2 || s.length > 45) return undefined;
  let head = s;
  let tail4: Uint8Array | undefined;
  // An IPv4 tail (::ffff:192.0.2.1) stands for the last two groups.
  const lastColon = s.lastIndexOf(":");
  if (s.indexOf(".", lastColon) >= 0) {
    tail4 = parse4(s.slice(lastColon + 1));
    if (!tail4) return undefined;
    head = s.slice(0, lastColon + 1) + "0:0";
  }
  const double = head.indexOf("::");
  if (double >= 0 && head.indexOf("::", double + 1) >= 0) return undefined;
  const split = (part: string): string[] | undefined => (part === "" ? [] : part.split(":"));
  let groups: string[];
  if (double >= 0) {
    const left = split(head.slice(0, double));
    const right = split(head.slice(double + 2));
    if (!left || !right) return undefined;
    const missing = 8 - left.length - right.length;
    if (missing < 1) return undefined;
    groups = [...left, ...Array<string>(missing).fill("0"), ...right];
  } else {
    groups = head.split(":");
  }
  if (groups.length !== 8) return undefined;
  const out = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    const g = groups[i]!;
    if (!HEX_GROUP.test(g)) return undefined;
    const n = parseInt(g, 16);
    out[2 * i] = n >> 8;
    out[2 * i + 1] = n & 0xff;
  }
  if (tail4) out.set(tail4, 12);
  return out;
}

export type ParsedIp = { addr: Addr } | { error: string };

/**
 * Parses an address as it may appear in `context.ip` or a header. Zoned addresses (`fe80::1%eth0`)
 * are refused: a zone names an interface of the sender's machine and means nothing here.
 */
export function parseIp(s: string): ParsedIp {
  if (s.includes("%")) return { error: "is a zoned address" };
  if (s.includes(":")) {
    const b = parse6(s);
    return b ? { addr: { v: 6, bytes: b } } : { error: "is not a valid IP address" };
  }
  const b = parse4(s);
  return b ? { addr: { v: 4, bytes: b } } : { error: "is not a valid IP address" };
}

/** `::ffff:a.b.c.d` → `a.b.c.d`; anything else as it is. */
export function unmap(a: Addr): Addr {
  if (a.v !== 6) return a;
  const b = a.bytes;
  for (let i = 0; i < 10; i++) if (b[i] !== 0) return a;
  if (b[10] !== 0xff || b[11] !== 0xff) return a;
  return { v: 4, bytes: b.slice(12) };
}

export function isMulticast(a: Addr): boolean {
  return a.v === 4 ? (a.bytes[0]! & 0xf0) === 224 : a.bytes[0] === 0xff;
}

/** The address with every bit after the first `bits` cleared. */
export function maskAddr(a: Addr, bits: number): Addr {
  const b = a.bytes.slice();
  for (let i = 0; i < b.length; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    b[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  return { v: a.v, bytes: b } as Addr;
}

/** Canonical text: dotted decimal, or RFC 5952 (lower case, the longest run of zero groups as `::`). */
export function formatIp(a: Addr): string {
  if (a.v === 4) return a.bytes.join(".");
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push((a.bytes[2 * i]! << 8) | a.bytes[2 * i + 1]!);
  let bestAt = -1,
    bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) [bestAt, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (g: number[]) => g.map((n) => n.toString(16)).join(":");
  if (bestLen < 2) return hex(groups);
  return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLen))}`;
}

/** An address fit to store: parsed, unmapped, not multicast. */
export function usableIp(s: string): ParsedIp {
  const p = parseIp(s);
  if ("error" in p) return p;
  const addr = unmap(p.addr);
  if (isMulticast(addr)) return { error: "is a multicast address" };
  return { addr };
}

/** Fast path for the common case: an IPv4 address already in canonical form. */
const CANONICAL_V4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** The masks of PRODUCT.md §1, by address family: [IPv4 bits, IPv6 bits]. */
const MASKS = { "255.255.255.0": [24, 48], "255.255.0.0": [16, 32] } as const;

/** `mask24` of a connection's `ip` setting: /24 for IPv4, /48 for IPv6. */
export function mask24(a: Addr): Addr {
  return maskAddr(a, a.v === 4 ? 24 : 48);
}

/**
 * What `context.ip` becomes, given the value the event sent and the request's own address
 * (canonical text, or undefined when unknown). Returns `{ip: undefined}` to remove the field,
 * or `{error}` with the reason (the caller names the field).
 */
export function resolveEventIp(
  value: string,
  requestIp: string | undefined,
): { ip: string | undefined } | { error: string } {
  if (CANONICAL_V4.test(value)) {
    if (value === "0.0.0.0") return { ip: undefined };
    if (value === "255.255.255.255") return { ip: requestIp };
    const mask = MASKS[value as keyof typeof MASKS];
    if (mask) {
      if (requestIp === undefined) return { ip: undefined };
      const r = usableIp(requestIp);
      if ("error" in r) return { ip: undefined };
      return { ip: formatIp(maskAddr(r.addr, r.addr.v === 4 ? mask[0] : mask[1])) };
    }
    const first = Number(value.slice(0, value.indexOf(".")));
    if ((first & 0xf0) === 224) return { error: "is a multicast address" };
    return { ip: value };
  }
  const r = usableIp(value);
  if ("error" in r) return r;
  const text = formatIp(r.addr);
  // A mapped special value (::ffff:0.0.0.0) means the same as the plain one.
  return r.addr.v === 4 ? resolveEventIp(text, requestIp) : { ip: text };
}

export type IpPolicy = "keep" | "mask24" | "drop";

/** A connection's `ip` setting applied to an address about to be stored. */
export function applyIpPolicy(ip: string | undefined, policy: IpPolicy | undefined): string | undefined {
  if (ip === undefined || policy === undefined || policy === "keep") return ip;
  if (policy === "drop") return undefined;
  const r = usableIp(ip);
  return "error" in r ? undefined : formatIp(mask24(r.addr));
}

/**
 * The client's address from the first `X-Forwarded-For` hop. A hop may be `v4`, `v4:port`, `v6`
 * or `[v6]:port` (what proxies write, e.g. Azure Front Door and some nginx set-ups include the
 * port); later hops are ignored. `{error}` when the first hop is not an address.
 */
export function forwardedFor(header: string): { ip: string } | { error: string } {
  const comma = header.indexOf(",");
  const hop = (comma < 0 ? header : header.slice(0, comma)).trim();
  const bad = { error: `X-Forwarded-For: the first hop ${JSON.stringify(hop.slice(0, 64))} is not an IP address` };
  let host = hop;
  if (hop.startsWith("[")) {
    const close = hop.indexOf("]");
    if (close < 0) return bad;
    const rest = hop.slice(close + 1);
    if (rest !== "" && !(/^:\d{1,5}$/.test(rest) && Number(rest.slice(1)) <= 65535)) return bad;
    host = hop.slice(1, close);
    if (!host.includes(":")) return bad;
  } else {
    const colons = hop.split(":").length - 1;
    if (colons === 1) {
      // v4:port — a bare IPv6 address always has at least two colons.
      const [h, port] = hop.split(":") as [string, string];
      if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) return bad;
      host = h;
    }
  }
  const r = usableIp(host);
  if ("error" in r) return { error: `X-Forwarded-For: the first hop ${JSON.stringify(hop.slice(0, 64))} ${r.error}` };
  return { ip: formatIp(r.addr) };
}

/** A socket address as the server reports it (`::ffff:127.0.0.1` on a dual-stack socket) in canonical form. */
export function socketIp(address: string | undefined): string | undefined {
  if (!address) return undefined;
  // A link-local peer comes with its interface (fe80::1%eth0): the zone means nothing off this host.
  const zone = address.indexOf("%");
  const r = parseIp(zone < 0 ? address : address.slice(0, zone));
  return "error" in r ? address : formatIp(unmap(r.addr));
}
