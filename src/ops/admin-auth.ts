import { createHash, timingSafeEqual } from "node:crypto";

export interface AdminAuthOptions {
  /** TRIBUTARY_ADMIN_TOKEN; without it admin routes are off. */
  token?: string;
  /** TRIBUTARY_DEV_ADMIN: without a token, open admin routes to loopback callers (development only). */
  devLoopback: boolean;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

const deny = (status: number, error: string) =>
  new Response(JSON.stringify({ error }), {
    status,
    headers: { "Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="tributary-admin"' },
  });

export function isLoopback(ip: string | undefined): boolean {
  return !!ip && (ip === "::1" || ip.startsWith("127.") || ip.startsWith("::ffff:127."));
}

/** A host name (no port) that names this machine's loopback interface. */
function loopbackName(hostname: string): boolean {
  const h = hostname.toLowerCase().replace(/\.$/, "");
  if (h === "localhost" || h === "[::1]" || h === "::1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(h);
  return !!m && m.slice(1).every((x) => Number(x) <= 255);
}

/** The `Host` header names loopback (`localhost`, `127.x.y.z`, `[::1]`, with or without a port). */
export function isLoopbackHost(host: string | null): boolean {
  if (!host) return false;
  const m = /^(\[[^\]]*\]|[^:]+)(?::\d{1,5})?$/.exec(host.trim());
  return !!m && loopbackName(m[1]!);
}

/** An `Origin` that is a page served from loopback (`http(s)://localhost:…`, `127.x.y.z`, `[::1]`). */
function isLoopbackOrigin(origin: string): boolean {
  try {
    const u = new URL(origin);
    return (u.protocol === "http:" || u.protocol === "https:") && loopbackName(u.hostname);
  } catch {
    return false;
  }
}

/**
 * Guards the admin routes and the debugger's data. Only the admin token opens them (write keys
 * never do), compared in constant time over digests so neither the token nor its length leaks.
 */
export function adminGuard(o: AdminAuthOptions) {
  const expected = o.token ? digest(o.token) : undefined;
  return (request: Request, ip: string | undefined): Response | undefined => {
    if (!expected) {
      if (o.devLoopback && isLoopback(ip)) {
        // The socket is loopback, but a browser on this machine can be steered by any web page:
        // DNS rebinding sends a foreign name in Host, a cross-site form or fetch sends its Origin.
        if (!isLoopbackHost(request.headers.get("host")))
          return deny(403, "TRIBUTARY_DEV_ADMIN: the Host header must name loopback (localhost, 127.0.0.1 or [::1])");
        const origin = request.headers.get("origin");
        if (origin !== null && !isLoopbackOrigin(origin))
          return deny(403, "TRIBUTARY_DEV_ADMIN: requests from another site's page are refused");
        return undefined;
      }
      return deny(
        403,
        "admin API disabled: set TRIBUTARY_ADMIN_TOKEN (or TRIBUTARY_DEV_ADMIN=1 for loopback during development)",
      );
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "");
    if (!m || !timingSafeEqual(digest(m[1]!), expected))
      return deny(401, "unauthorized: send Authorization: Bearer <admin token>");
    return undefined;
  };
}
