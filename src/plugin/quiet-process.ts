/**
 * Imported first by the plugin executable: from here on Node itself writes nothing to stderr,
 * whatever the configuration or environment, because notation parses the whole of stderr as
 * the one JSON error object (protocol §1.5). Warnings (DEP0123 for an IP address as TLS server
 * name, NODE_TLS_REJECT_UNAUTHORIZED, experimental features named in NODE_OPTIONS) are
 * dropped as --no-warnings would: Node's own printer is a 'warning' listener, and warnings are
 * emitted on a later tick, so those raised while Node started are dropped too.
 * --throw-deprecation and --trace-deprecation have nothing to act on once deprecations are off.
 */
process.noDeprecation = true;
process.removeAllListeners("warning");
process.on("warning", () => undefined);
