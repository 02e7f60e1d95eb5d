// The bounded label values of hsm_signer_tls_handshake_failures_total: the server edge classifies
// refused handshakes into these, and metrics/ declares the counter with them.
/**
 * Why a connection was refused before any gRPC call: a bounded set, for the metric's label.
 * no_certificate: mTLS required and none presented; unknown_ca: not issued by a client CA
 * (another CA, self-signed); certificate_expired / certificate_not_yet_valid: outside its
 * validity; certificate_revoked: listed in a CRL of the client CAs; crl_unavailable: a CA of the
 * client's chain has no usable CRL (none loaded, past its nextUpdate, bad signature), so its
 * clients are refused; bad_certificate: any other verification failure (wrong purpose, bad signature...);
 * client_alert: the client gave up, usually because it does not trust the server certificate;
 * no_h2: TLS without ALPN "h2" (not a gRPC client); protocol: not TLS or no common TLS version or
 * cipher; timeout: the handshake did not finish in time; closed: the client closed the connection
 * before the handshake finished (a TCP probe, a port scan); connection_limit: the listener already
 * had its maximum of open connections; other: anything else.
 */
export const TLS_HANDSHAKE_FAILURE_REASONS = [
  "no_certificate",
  "unknown_ca",
  "certificate_expired",
  "certificate_not_yet_valid",
  "certificate_revoked",
  "crl_unavailable",
  "bad_certificate",
  "client_alert",
  "no_h2",
  "protocol",
  "timeout",
  "closed",
  "connection_limit",
  "other",
] as const;
export type TlsHandshakeFailureReason = (typeof TLS_HANDSHAKE_FAILURE_REASONS)[number];
