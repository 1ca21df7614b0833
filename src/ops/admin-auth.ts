import { createHash, timingSafeEqual } from "node:crypto";

export interface AdminAuthOptions {
  /** TRIBUTARY_ADMIN_TOKEN; without it admin routes are off. */
  token?: string;
  /** TRIBUTARY_DEV_ADMIN: without a token, open admin routes to loopback callers (development only). */
  devLoopback: boolean;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

const deny = (status: number, error: string) =>
  new Response(JSON.stringify({ error }), { status, headers: { "Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="tributary-admin"' } });

export function isLoopback(ip: string | undefined): boolean {
  return !!ip && (ip === "::1" || ip.startsWith("127.") || ip.startsWith("::ffff:127."));
}

/**
 * Guards the admin routes and the debugger's data. Only the admin token opens them (write keys
 * never do), compared in constant time over digests so neither the token nor its length leaks.
 */
export function adminGuard(o: AdminAuthOptions) {
  const expected = o.token ? digest(o.token) : undefined;
  return (request: Request, ip: string | undefined): Response | undefined => {
    if (!expected) {
      if (o.devLoopback && isLoopback(ip)) return undefined;
      return deny(403, "admin API disabled: set TRIBUTARY_ADMIN_TOKEN (or TRIBUTARY_DEV_ADMIN=1 for loopback during development)");
    }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(request.headers.get("authorization") ?? "");
    if (!m || !timingSafeEqual(digest(m[1]!), expected)) return deny(401, "unauthorized: send Authorization: Bearer <admin token>");
    return undefined;
  };
}
