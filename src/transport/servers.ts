/** Server specs and TLS settings, resolved before anything is opened. */
import { isIP } from 'node:net';
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';

/** A host name or IPv4 address: letters, digits, dots, hyphens (underscores: some resolvers allow them), maybe a final dot. */
const HOST_NAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$/;

/**
 * Parses '[user:pass@]host[:port]' (IPv6 in brackets) the way memjs does.
 * Anything else (a URL, a `;`-separated list, spaces inside) throws a
 * RangeError naming `servers` at once, instead of failing at the first
 * request with ENOTFOUND.
 */
export function parseServer(spec: string): { host: string; port: number; username?: string; password?: string } {
  const at = spec.lastIndexOf('@');
  const auth = at === -1 ? undefined : spec.slice(0, at);
  const hostPort = at === -1 ? spec : spec.slice(at + 1);
  let host = hostPort;
  let portText = '11211';
  const bracket = /^\[(.+)\](?::(.*))?$/.exec(hostPort);
  if (bracket) {
    host = bracket[1] as string;
    if (bracket[2] !== undefined) portText = bracket[2];
  } else {
    const colon = hostPort.lastIndexOf(':');
    if (colon !== -1) {
      host = hostPort.slice(0, colon);
      portText = hostPort.slice(colon + 1);
    }
  }
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  // A bare IPv6 address ('::1:11211') is read as memjs reads it: the last colon starts the port.
  const hostOk = HOST_NAME.test(host) || isIP(host) === 6;
  if (!hostOk || !(port >= 1 && port <= 65_535)) {
    throw new RangeError(
      `Expected \`servers\` entries to look like 'host:port' (e.g. 'localhost:11211'; several: 'a:11211,b:11211'), got ${JSON.stringify(spec)}${serverHint(spec)}`,
    );
  }
  if (auth === undefined) return { host, port };
  const colon = auth.indexOf(':');
  return colon === -1
    ? { host, port, username: auth }
    : { host, port, username: auth.slice(0, colon), password: auth.slice(colon + 1) };
}

/** What is probably wrong with a bad `servers` entry, if something common. */
function serverHint(spec: string): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(spec)) return ': a host and port, not a URL (no scheme)';
  if (spec.includes(';')) return ': separate servers with commas, not semicolons';
  if (/\s/.test(spec)) return ': separate servers with commas, not spaces';
  return '';
}

/**
 * The TLS options of one server: `false` = plain TCP; `true` = the system
 * CAs and the host name as servername (SNI and certificate check); an object
 * is passed to `tls.connect` as is, with `servername` defaulting to the host.
 * No SNI for an IP address (RFC 6066); the certificate is then checked
 * against the IP.
 */
export function tlsFor(
  host: string,
  option: boolean | TlsConnectionOptions | undefined,
): TlsConnectionOptions | undefined {
  if (option === undefined || option === false) return undefined;
  const base: TlsConnectionOptions = option === true ? {} : option;
  if (base.servername !== undefined || isIP(host) !== 0) return base;
  return { ...base, servername: host };
}
