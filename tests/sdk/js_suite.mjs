// The AWS SDK for JavaScript v3 (@aws-sdk/client-kms) against xks-kms-local + xks-proxy +
// SoftHSM2 (driven by tests/kms_local_sdks.rs).
//
// Every failure asserts the exception `name` the SDK raises and that it is an instance of the
// SDK's modelled class where the model has one. The SDK deserialises timestamps from
// epoch-second numbers into Date objects and rejects other shapes, so the suite also checks
// those types.
//
// Environment: XKS_NODE_MODULES (the folder holding @aws-sdk/client-kms), KMS_ENDPOINT,
// KMS_AKID, KMS_SECRET, XKS_ENDPOINT, XKS_PATH, XKS_PATH_B, XKS_AKID, XKS_SECRET, XKS_AKID_B,
// XKS_SECRET_B, XKS_KEY, XKS_KEY_ENCRYPT_ONLY, UNREACHABLE_ENDPOINT.
import { createRequire } from "node:module";
import { randomBytes } from "node:crypto";
import path from "node:path";

const E = process.env;
const require = createRequire(path.join(E.XKS_NODE_MODULES, "noop.js"));
const K = require("@aws-sdk/client-kms");

let checks = 0;

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
  checks += 1;
}

function client(akid = E.KMS_AKID, secret = E.KMS_SECRET) {
  return new K.KMSClient({
    endpoint: E.KMS_ENDPOINT,
    region: "us-east-1",
    credentials: { accessKeyId: akid, secretAccessKey: secret },
    // One attempt: a retried failure would hide which call failed and slow the suite.
    maxAttempts: 1,
  });
}

const kms = client();
const send = (Command, input, c = kms) => c.send(new Command(input));

/** Sends `Command(input)` and asserts the SDK raises exception `name`. */
async function raises(name, Command, input, c = kms) {
  try {
    await send(Command, input, c);
  } catch (err) {
    check(err.name === name, `${Command.name}: expected ${name}, got ${err.name}: ${err.message}`);
    // A modelled KMS exception arrives as its own class (protocol-level ones are not modelled).
    if (K[name]) check(err instanceof K[name], `${Command.name}: ${name} is not the SDK's class`);
    check(err.$metadata?.requestId, `${Command.name}: ${name} without a request id`);
    check(err.$metadata?.httpStatusCode === 400, `${name}: status ${err.$metadata?.httpStatusCode}`);
    return err;
  }
  throw new Error(`${Command.name}: expected ${name}, got success`);
}

const equalBytes = (a, b) => Buffer.from(a).equals(Buffer.from(b));

function storeArgs(name, { path: uriPath = E.XKS_PATH, akid = E.XKS_AKID, secret = E.XKS_SECRET,
  endpoint = E.XKS_ENDPOINT } = {}) {
  return {
    CustomKeyStoreName: name,
    CustomKeyStoreType: "EXTERNAL_KEY_STORE",
    XksProxyUriEndpoint: endpoint,
    XksProxyUriPath: uriPath,
    XksProxyConnectivity: "PUBLIC_ENDPOINT",
    XksProxyAuthenticationCredential: { AccessKeyId: akid, RawSecretAccessKey: secret },
  };
}

async function describeStore(id) {
  const { CustomKeyStores } = await send(K.DescribeCustomKeyStoresCommand,
    { CustomKeyStoreId: id });
  check(CustomKeyStores.length === 1, "one store");
  return CustomKeyStores[0];
}

async function inboundAuth() {
  await raises("InvalidSignatureException", K.ListKeysCommand, {},
    client(E.KMS_AKID, "x".repeat(40)));
  await raises("UnrecognizedClientException", K.ListKeysCommand, {},
    client("AKIAUNKNOWNUNKNOWN00"));
}

async function storeFailures() {
  await raises("XksProxyIncorrectAuthenticationCredentialException",
    K.CreateCustomKeyStoreCommand, storeArgs("wrong-credential", { secret: "W".repeat(44) }));
  await raises("XksProxyUriUnreachableException", K.CreateCustomKeyStoreCommand,
    storeArgs("unreachable", { endpoint: E.UNREACHABLE_ENDPOINT }));
  await raises("XksProxyInvalidConfigurationException", K.CreateCustomKeyStoreCommand,
    storeArgs("no-such-path", { path: "/nope/kms/xks/v1" }));
  const { CustomKeyStores } = await send(K.DescribeCustomKeyStoresCommand, {});
  check(CustomKeyStores.length === 0, "no store was created");
}

async function storeLifecycle() {
  const args = storeArgs("lifecycle",
    { path: E.XKS_PATH_B, akid: E.XKS_AKID_B, secret: E.XKS_SECRET_B });
  const { CustomKeyStoreId: id } = await send(K.CreateCustomKeyStoreCommand, args);
  check(/^cks-[0-9a-f]{17}$/.test(id), id);
  let store = await describeStore(id);
  check(store.ConnectionState === "DISCONNECTED", JSON.stringify(store));
  check(store.CreationDate instanceof Date && !isNaN(store.CreationDate),
    `CreationDate is a Date: ${store.CreationDate}`);
  check(Math.abs(store.CreationDate.getTime() - Date.now()) < 60_000, "CreationDate is now");
  check(store.XksProxyConfiguration.UriPath === E.XKS_PATH_B, JSON.stringify(store));
  await raises("CustomKeyStoreNameInUseException", K.CreateCustomKeyStoreCommand,
    storeArgs("lifecycle", { path: "/other/kms/xks/v1" }));
  await send(K.ConnectCustomKeyStoreCommand, { CustomKeyStoreId: id });
  check((await describeStore(id)).ConnectionState === "CONNECTED", "connected");
  await raises("CustomKeyStoreInvalidStateException", K.DeleteCustomKeyStoreCommand,
    { CustomKeyStoreId: id });
  await send(K.UpdateCustomKeyStoreCommand, { CustomKeyStoreId: id,
    NewCustomKeyStoreName: "renamed" });
  check((await describeStore(id)).CustomKeyStoreName === "renamed", "renamed");
  // A wrong credential is health-checked and refused; the store keeps its old one.
  await raises("XksProxyIncorrectAuthenticationCredentialException",
    K.UpdateCustomKeyStoreCommand, { CustomKeyStoreId: id,
      XksProxyAuthenticationCredential: { AccessKeyId: E.XKS_AKID_B,
        RawSecretAccessKey: "Q".repeat(44) } });
  store = await describeStore(id);
  check(store.XksProxyConfiguration.AccessKeyId === E.XKS_AKID_B, "credential kept");
  await send(K.DisconnectCustomKeyStoreCommand, { CustomKeyStoreId: id });
  await send(K.DeleteCustomKeyStoreCommand, { CustomKeyStoreId: id });
  await raises("CustomKeyStoreNotFoundException", K.DescribeCustomKeyStoresCommand,
    { CustomKeyStoreId: id });
}

async function makeKeys() {
  const { CustomKeyStoreId: store } = await send(K.CreateCustomKeyStoreCommand,
    storeArgs("main"));
  const xks = { Origin: "EXTERNAL_KEY_STORE", CustomKeyStoreId: store };
  await raises("CustomKeyStoreInvalidStateException", K.CreateKeyCommand,
    { XksKeyId: E.XKS_KEY, ...xks });
  await send(K.ConnectCustomKeyStoreCommand, { CustomKeyStoreId: store });
  const { KeyMetadata: meta } = await send(K.CreateKeyCommand,
    { XksKeyId: E.XKS_KEY, Description: "xks key", ...xks });
  check(meta.Origin === "EXTERNAL_KEY_STORE" && meta.KeyState === "Enabled" && meta.Enabled,
    JSON.stringify(meta));
  check(meta.XksKeyConfiguration?.Id === E.XKS_KEY, JSON.stringify(meta));
  check(meta.CustomKeyStoreId === store, JSON.stringify(meta));
  check(meta.CreationDate instanceof Date && !isNaN(meta.CreationDate), "CreationDate is a Date");
  check(meta.Arn === `arn:aws:kms:us-east-1:111122223333:key/${meta.KeyId}`, meta.Arn);
  check(meta.KeySpec === "SYMMETRIC_DEFAULT" && meta.KeyUsage === "ENCRYPT_DECRYPT",
    JSON.stringify(meta));
  check(meta.EncryptionAlgorithms?.includes("SYMMETRIC_DEFAULT"), JSON.stringify(meta));
  await raises("XksKeyAlreadyInUseException", K.CreateKeyCommand,
    { XksKeyId: E.XKS_KEY, ...xks });
  await raises("XksKeyNotFoundException", K.CreateKeyCommand, { XksKeyId: "no-such-key", ...xks });
  await raises("XksKeyInvalidConfigurationException", K.CreateKeyCommand,
    { XksKeyId: E.XKS_KEY_ENCRYPT_ONLY, ...xks });
  const { KeyMetadata: aws } = await send(K.CreateKeyCommand, { Description: "aws key" });
  check(aws.Origin === "AWS_KMS" && aws.CustomKeyStoreId === undefined, JSON.stringify(aws));
  const { Keys, Truncated } = await send(K.ListKeysCommand, {});
  check(!Truncated && Keys.length === 2, JSON.stringify(Keys));
  const described = await send(K.DescribeKeyCommand, { KeyId: meta.Arn });
  check(described.KeyMetadata.KeyId === meta.KeyId, "describe by ARN");
  await raises("NotFoundException", K.DescribeKeyCommand,
    { KeyId: "4b3f5a38-1111-4222-8333-444455556666" });
  return { store, xksKey: meta.KeyId, awsKey: aws.KeyId };
}

async function crypto(xksKey, awsKey) {
  for (const key of [xksKey, awsKey]) {
    for (const context of [undefined, { purpose: "test", tenant: "a" }]) {
      const what = `${key === xksKey ? "xks" : "aws"} key, ${context ? "with" : "no"} context`;
      const plaintext = randomBytes(100);
      const out = await send(K.EncryptCommand,
        { KeyId: key, Plaintext: plaintext, EncryptionContext: context });
      check(out.CiphertextBlob instanceof Uint8Array, `${what}: blob is bytes`);
      check(out.KeyId.endsWith(key) && out.EncryptionAlgorithm === "SYMMETRIC_DEFAULT",
        JSON.stringify({ ...out, CiphertextBlob: undefined }));
      check(out.$metadata.requestId, "Encrypt has a request id");
      const back = await send(K.DecryptCommand,
        { CiphertextBlob: out.CiphertextBlob, EncryptionContext: context });
      check(equalBytes(back.Plaintext, plaintext), `${what}: round trip`);
      check(back.KeyId.endsWith(key), `${what}: Decrypt KeyId ${back.KeyId}`);
      await raises("InvalidCiphertextException", K.DecryptCommand,
        { CiphertextBlob: out.CiphertextBlob, EncryptionContext: { ...context, extra: "x" } });
      await raises("IncorrectKeyException", K.DecryptCommand, { CiphertextBlob: out.CiphertextBlob,
        EncryptionContext: context, KeyId: key === xksKey ? awsKey : xksKey });

      const data = await send(K.GenerateDataKeyCommand,
        { KeyId: key, KeySpec: "AES_256", EncryptionContext: context });
      check(data.Plaintext.length === 32 && data.KeyId.endsWith(key), `${what}: data key`);
      const opened = await send(K.DecryptCommand,
        { CiphertextBlob: data.CiphertextBlob, EncryptionContext: context });
      check(equalBytes(opened.Plaintext, data.Plaintext), `${what}: data key decrypts`);
      const bare = await send(K.GenerateDataKeyWithoutPlaintextCommand,
        { KeyId: key, NumberOfBytes: 24, EncryptionContext: context });
      check(bare.Plaintext === undefined, `${what}: no plaintext`);
      const bareOpened = await send(K.DecryptCommand,
        { CiphertextBlob: bare.CiphertextBlob, EncryptionContext: context });
      check(bareOpened.Plaintext.length === 24, `${what}: 24-byte data key`);
    }
  }
  await raises("ValidationException", K.GenerateDataKeyCommand, { KeyId: xksKey });
}

async function reEncrypt(xksKey, awsKey) {
  const plaintext = Buffer.from("re-encrypt me");
  const source = { side: "xks" };
  const target = { side: "aws" };
  const blob = (await send(K.EncryptCommand,
    { KeyId: xksKey, Plaintext: plaintext, EncryptionContext: source })).CiphertextBlob;
  const out = await send(K.ReEncryptCommand, { CiphertextBlob: blob,
    SourceEncryptionContext: source, DestinationKeyId: awsKey,
    DestinationEncryptionContext: target });
  check(out.SourceKeyId.endsWith(xksKey) && out.KeyId.endsWith(awsKey), JSON.stringify(out));
  check(out.SourceEncryptionAlgorithm === "SYMMETRIC_DEFAULT", "source algorithm");
  const opened = await send(K.DecryptCommand,
    { CiphertextBlob: out.CiphertextBlob, EncryptionContext: target });
  check(equalBytes(opened.Plaintext, plaintext), "xks -> aws");
  const back = await send(K.ReEncryptCommand, { CiphertextBlob: out.CiphertextBlob,
    SourceEncryptionContext: target, SourceKeyId: awsKey, DestinationKeyId: xksKey });
  check(back.KeyId.endsWith(xksKey), "aws -> xks key");
  check(equalBytes((await send(K.DecryptCommand, { CiphertextBlob: back.CiphertextBlob }))
    .Plaintext, plaintext), "aws -> xks");
  await raises("InvalidCiphertextException", K.ReEncryptCommand,
    { CiphertextBlob: blob, DestinationKeyId: awsKey });
}

async function disabledKey(xksKey) {
  const blob = (await send(K.EncryptCommand,
    { KeyId: xksKey, Plaintext: Buffer.from("before") })).CiphertextBlob;
  await send(K.DisableKeyCommand, { KeyId: xksKey });
  const meta = (await send(K.DescribeKeyCommand, { KeyId: xksKey })).KeyMetadata;
  check(meta.KeyState === "Disabled" && meta.Enabled === false, JSON.stringify(meta));
  await raises("DisabledException", K.EncryptCommand,
    { KeyId: xksKey, Plaintext: Buffer.from("x") });
  await raises("DisabledException", K.DecryptCommand, { CiphertextBlob: blob });
  await raises("DisabledException", K.GenerateDataKeyCommand,
    { KeyId: xksKey, KeySpec: "AES_256" });
  await raises("DisabledException", K.GenerateDataKeyWithoutPlaintextCommand,
    { KeyId: xksKey, KeySpec: "AES_256" });
  await send(K.EnableKeyCommand, { KeyId: xksKey });
  const back = await send(K.DecryptCommand, { CiphertextBlob: blob });
  check(Buffer.from(back.Plaintext).toString() === "before", "enabled again");
}

async function unreachableProxy(store, xksKey) {
  // Moving a store to a port nothing listens on is health-checked and refused; while the
  // store is disconnected, crypto on its key is KMSInvalidStateException.
  await send(K.DisconnectCustomKeyStoreCommand, { CustomKeyStoreId: store });
  await raises("XksProxyUriUnreachableException", K.UpdateCustomKeyStoreCommand,
    { CustomKeyStoreId: store, XksProxyUriEndpoint: E.UNREACHABLE_ENDPOINT });
  const kept = await describeStore(store);
  check(kept.XksProxyConfiguration.UriEndpoint === E.XKS_ENDPOINT, JSON.stringify(kept));
  await raises("KMSInvalidStateException", K.EncryptCommand,
    { KeyId: xksKey, Plaintext: Buffer.from("x") });
  const meta = (await send(K.DescribeKeyCommand, { KeyId: xksKey })).KeyMetadata;
  check(meta.KeyState === "Unavailable", `Unavailable while disconnected: ${meta.KeyState}`);
  await send(K.ConnectCustomKeyStoreCommand, { CustomKeyStoreId: store });
  check((await describeStore(store)).ConnectionState === "CONNECTED", "reconnected");
  await send(K.EncryptCommand, { KeyId: xksKey, Plaintext: Buffer.from("x") });
}

await inboundAuth();
await storeFailures();
await storeLifecycle();
const { store, xksKey, awsKey } = await makeKeys();
await crypto(xksKey, awsKey);
await reEncrypt(xksKey, awsKey);
await disabledKey(xksKey);
await unreachableProxy(store, xksKey);
console.log(`OK js: ${checks} checks`);
