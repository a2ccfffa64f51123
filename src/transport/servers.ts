/** Server specs and TLS settings, resolved before anything is opened. */
import { isIP } from 'node:net';
import type { ConnectionOptions as TlsConnectionOptions } from 'node:tls';

/** Parses '[user:pass@]host[:port]' (IPv6 in brackets) the way memjs does. */
export function parseServer(spec: string): { host: string; port: number; username?: string; password?: string } {
  const at = spec.lastIndexOf('@');
  const auth = at === -1 ? undefined : spec.slice(0, at);
  const hostPort = at === -1 ? spec : spec.slice(at + 1);
  let host = hostPort;
  let port = 11_211;
  const bracket = /^\[(.+)\](?::(\d+))?$/.exec(hostPort);
  if (bracket) {
    host = bracket[1] as string;
    if (bracket[2] !== undefined) port = Number(bracket[2]);
  } else {
    const colon = hostPort.lastIndexOf(':');
    if (colon !== -1) {
      host = hostPort.slice(0, colon);
      port = Number(hostPort.slice(colon + 1));
    }
  }
  if (host === '' || !Number.isInteger(port) || port < 1 || port > 65_535) {
    throw new RangeError(`Expected \`servers\` entries to look like 'host:port', got ${JSON.stringify(spec)}`);
  }
  if (auth === undefined) return { host, port };
  const colon = auth.indexOf(':');
  return colon === -1
    ? { host, port, username: auth }
    : { host, port, username: auth.slice(0, colon), password: auth.slice(colon + 1) };
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
