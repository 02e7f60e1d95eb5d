// The key custodian command line: what bin/hsm-signer.ts uses.
export { ADMIN_USAGE, runAdminCommand } from "./admin-cli.js";
