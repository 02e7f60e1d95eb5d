export { main, writeAll } from "./main.js";
export { pluginCodeOf } from "./remote-signer.js";
export { PLUGIN_NAME, PLUGIN_VERSION, type PluginErrorCode } from "./contract.js";
