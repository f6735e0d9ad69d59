#!/usr/bin/env python3
"""boto3 against xks-kms-local + xks-proxy + SoftHSM2 (driven by tests/kms_local.rs).

Every failure asserts the exception class boto3 raises. Phase `main` runs the whole suite and
writes what phase `after-restart` needs (a ciphertext made before the front restarted) to
$SUITE_OUT; it prints `REQUEST_ID <id>` for one Encrypt so the Rust test can find the proxy's
audit line with that `kms_request_id`.

Environment: KMS_ENDPOINT, KMS_AKID, KMS_SECRET (the front's inbound credential), XKS_ENDPOINT,
XKS_PATH, XKS_PATH_B, XKS_AKID, XKS_SECRET, XKS_AKID_2, XKS_SECRET_2, XKS_AKID_B, XKS_SECRET_B,
XKS_KEY, XKS_KEY_ENCRYPT_ONLY, UNREACHABLE_ENDPOINT, PROXY_PID, PROXY_CONFIG,
PROXY_CONFIG_ROTATED, SUITE_OUT.
"""
import base64
import datetime
import json
import os
import signal
import sys
import time

import boto3
import botocore.config
import botocore.exceptions

E = os.environ
CHECKS = 0


def client(akid=None, secret=None):
    return boto3.client(
        "kms",
        endpoint_url=E["KMS_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=akid or E["KMS_AKID"],
        aws_secret_access_key=secret or E["KMS_SECRET"],
        # One attempt: a retried failure would hide which call failed and slow the suite.
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


kms = client()


def check(condition, what):
    global CHECKS
    if not condition:
        raise AssertionError(what)
    CHECKS += 1


def raises(name, call, **kwargs):
    """Calls `call(**kwargs)` and asserts boto3 raises the modelled exception `name`."""
    global CHECKS
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as err:
        code = err.response["Error"]["Code"]
        check(code == name, f"{call.__name__}: expected {name}, got {code}: {err}")
        # A modelled KMS exception must arrive as its own class, not the generic ClientError
        # (the protocol-level ones, e.g. InvalidSignatureException, are not in the model).
        if hasattr(kms.exceptions, name):
            check(type(err).__name__ == name, f"{call.__name__}: class {type(err).__name__}")
        check(err.response["ResponseMetadata"]["RequestId"], "error without RequestId")
        return err
    raise AssertionError(f"{call.__name__}: expected {name}, got success")


def store_args(name, path=None, akid=None, secret=None, endpoint=None):
    return dict(
        CustomKeyStoreName=name,
        CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyUriEndpoint=endpoint or E["XKS_ENDPOINT"],
        XksProxyUriPath=path or E["XKS_PATH"],
        XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyAuthenticationCredential={
            "AccessKeyId": akid or E["XKS_AKID"],
            "RawSecretAccessKey": secret or E["XKS_SECRET"],
        },
    )


def describe_store(store_id):
    stores = kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"]
    check(len(stores) == 1, "one store")
    return stores[0]


def inbound_auth():
    raises("InvalidSignatureException", client(secret="x" * 40).list_keys)
    raises("UnrecognizedClientException", client(akid="AKIAUNKNOWNUNKNOWN00").list_keys)


def store_failures():
    wrong = "W" * 44
    raises("XksProxyIncorrectAuthenticationCredentialException",
           kms.create_custom_key_store, **store_args("wrong-credential", secret=wrong))
    raises("XksProxyUriUnreachableException",
           kms.create_custom_key_store,
           **store_args("unreachable", endpoint=E["UNREACHABLE_ENDPOINT"]))
    raises("XksProxyInvalidConfigurationException",
           kms.create_custom_key_store, **store_args("no-such-path", path="/nope/kms/xks/v1"))
    raises("UnsupportedOperationException", kms.create_custom_key_store,
           CustomKeyStoreName="cloudhsm", CloudHsmClusterId="cluster-1234567890a")
    check(kms.describe_custom_key_stores()["CustomKeyStores"] == [], "no store was created")


def store_lifecycle():
    """Create, describe, connect, disconnect, delete a second store (tenant-b's credential)."""
    store_id = kms.create_custom_key_store(
        **store_args("lifecycle", path=E["XKS_PATH_B"], akid=E["XKS_AKID_B"],
                     secret=E["XKS_SECRET_B"]))["CustomKeyStoreId"]
    check(store_id.startswith("cks-") and len(store_id) == 21, store_id)
    store = describe_store(store_id)
    check(store["ConnectionState"] == "DISCONNECTED", store)
    check(isinstance(store["CreationDate"], datetime.datetime), "CreationDate is a timestamp")
    check(store["XksProxyConfiguration"] == {
        "Connectivity": "PUBLIC_ENDPOINT", "AccessKeyId": E["XKS_AKID_B"],
        "UriEndpoint": E["XKS_ENDPOINT"], "UriPath": E["XKS_PATH_B"]}, store)
    raises("CustomKeyStoreNameInUseException", kms.create_custom_key_store,
           **store_args("lifecycle", path="/other/kms/xks/v1"))
    raises("XksProxyUriInUseException", kms.create_custom_key_store,
           **store_args("same-uri", path=E["XKS_PATH_B"], akid=E["XKS_AKID_B"],
                        secret=E["XKS_SECRET_B"]))
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    check(describe_store(store_id)["ConnectionState"] == "CONNECTED", "connected")
    raises("CustomKeyStoreInvalidStateException", kms.delete_custom_key_store,
           CustomKeyStoreId=store_id)
    kms.update_custom_key_store(CustomKeyStoreId=store_id, NewCustomKeyStoreName="renamed")
    check(describe_store(store_id)["CustomKeyStoreName"] == "renamed", "renamed")
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    raises("CustomKeyStoreInvalidStateException", kms.disconnect_custom_key_store,
           CustomKeyStoreId=store_id)
    kms.delete_custom_key_store(CustomKeyStoreId=store_id)
    raises("CustomKeyStoreNotFoundException", kms.describe_custom_key_stores,
           CustomKeyStoreId=store_id)


def make_keys():
    store_id = kms.create_custom_key_store(**store_args("main"))["CustomKeyStoreId"]
    xks = dict(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id)
    raises("CustomKeyStoreInvalidStateException", kms.create_key, XksKeyId=E["XKS_KEY"], **xks)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    meta = kms.create_key(XksKeyId=E["XKS_KEY"], Description="xks key", **xks)["KeyMetadata"]
    check(meta["Origin"] == "EXTERNAL_KEY_STORE", meta)
    check(meta["KeyState"] == "Enabled" and meta["Enabled"], meta)
    check(meta["XksKeyConfiguration"] == {"Id": E["XKS_KEY"]}, meta)
    check(meta["CustomKeyStoreId"] == store_id, meta)
    check(meta["Arn"] == f"arn:aws:kms:us-east-1:111122223333:key/{meta['KeyId']}", meta)
    check(isinstance(meta["CreationDate"], datetime.datetime), "CreationDate is a timestamp")
    raises("XksKeyAlreadyInUseException", kms.create_key, XksKeyId=E["XKS_KEY"], **xks)
    raises("XksKeyNotFoundException", kms.create_key, XksKeyId="no-such-key", **xks)
    raises("XksKeyInvalidConfigurationException", kms.create_key,
           XksKeyId=E["XKS_KEY_ENCRYPT_ONLY"], **xks)
    aws = kms.create_key(Description="aws key")["KeyMetadata"]
    check(aws["Origin"] == "AWS_KMS" and "CustomKeyStoreId" not in aws, aws)
    listed = {k["KeyId"] for k in kms.list_keys()["Keys"]}
    check(listed == {meta["KeyId"], aws["KeyId"]}, listed)
    page = kms.list_keys(Limit=1)
    check(page["Truncated"] and len(page["Keys"]) == 1, page)
    rest = kms.list_keys(Limit=1, Marker=page["NextMarker"])
    check(not rest["Truncated"] and len(rest["Keys"]) == 1, rest)
    check(kms.describe_key(KeyId=meta["Arn"])["KeyMetadata"]["KeyId"] == meta["KeyId"], "arn")
    raises("NotFoundException", kms.describe_key, KeyId="alias/nope")
    raises("NotFoundException", kms.describe_key, KeyId="4b3f5a38-1111-4222-8333-444455556666")
    return store_id, meta["KeyId"], aws["KeyId"]


def crypto(xks_key, aws_key):
    request_id = None
    for key in (xks_key, aws_key):
        for context in ({}, {"purpose": "test", "tenant": "a"}):
            plaintext = os.urandom(100)
            out = kms.encrypt(KeyId=key, Plaintext=plaintext, EncryptionContext=context)
            if key == xks_key and context and request_id is None:
                request_id = out["ResponseMetadata"]["RequestId"]
            blob = out["CiphertextBlob"]
            check(len(blob) <= 6144 and blob[0] == 1, "versioned blob")
            back = kms.decrypt(CiphertextBlob=blob, EncryptionContext=context)
            check(back["Plaintext"] == plaintext, "round trip")
            check(back["KeyId"].endswith(key) and back["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT",
                  back)
            kms.decrypt(CiphertextBlob=blob, EncryptionContext=context, KeyId=key)
            raises("InvalidCiphertextException", kms.decrypt, CiphertextBlob=blob,
                   EncryptionContext={**context, "extra": "x"})
            other = aws_key if key == xks_key else xks_key
            raises("IncorrectKeyException", kms.decrypt, CiphertextBlob=blob,
                   EncryptionContext=context, KeyId=other)
            tampered = bytearray(blob)
            tampered[-1] ^= 1
            raises("InvalidCiphertextException", kms.decrypt, CiphertextBlob=bytes(tampered),
                   EncryptionContext=context)

            data = kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=context)
            check(len(data["Plaintext"]) == 32, "AES_256 data key")
            check(kms.decrypt(CiphertextBlob=data["CiphertextBlob"],
                              EncryptionContext=context)["Plaintext"] == data["Plaintext"],
                  "data key decrypts")
            data = kms.generate_data_key(KeyId=key, NumberOfBytes=64, EncryptionContext=context)
            check(len(data["Plaintext"]) == 64, "64-byte data key")
            bare = kms.generate_data_key_without_plaintext(KeyId=key, KeySpec="AES_128",
                                                           EncryptionContext=context)
            check("Plaintext" not in bare, "no plaintext")
            check(len(kms.decrypt(CiphertextBlob=bare["CiphertextBlob"],
                                  EncryptionContext=context)["Plaintext"]) == 16, "AES_128")
    raises("ValidationException", kms.generate_data_key, KeyId=xks_key)
    big = kms.encrypt(KeyId=xks_key, Plaintext=os.urandom(4096))["CiphertextBlob"]
    check(len(big) <= 6144, f"largest blob is {len(big)} bytes")
    return request_id


def re_encrypt(xks_key, aws_key):
    plaintext = b"re-encrypt me"
    source = {"side": "xks"}
    target = {"side": "aws"}
    blob = kms.encrypt(KeyId=xks_key, Plaintext=plaintext, EncryptionContext=source)
    out = kms.re_encrypt(CiphertextBlob=blob["CiphertextBlob"], SourceEncryptionContext=source,
                         DestinationKeyId=aws_key, DestinationEncryptionContext=target)
    check(out["SourceKeyId"].endswith(xks_key) and out["KeyId"].endswith(aws_key), out)
    check(kms.decrypt(CiphertextBlob=out["CiphertextBlob"],
                      EncryptionContext=target)["Plaintext"] == plaintext, "xks -> aws")
    back = kms.re_encrypt(CiphertextBlob=out["CiphertextBlob"], SourceEncryptionContext=target,
                          SourceKeyId=aws_key, DestinationKeyId=xks_key)
    check(kms.decrypt(CiphertextBlob=back["CiphertextBlob"])["Plaintext"] == plaintext,
          "aws -> xks")
    raises("InvalidCiphertextException", kms.re_encrypt, CiphertextBlob=blob["CiphertextBlob"],
           DestinationKeyId=aws_key)


def disabled_key(xks_key):
    blob = kms.encrypt(KeyId=xks_key, Plaintext=b"before")["CiphertextBlob"]
    kms.disable_key(KeyId=xks_key)
    check(kms.describe_key(KeyId=xks_key)["KeyMetadata"]["KeyState"] == "Disabled", "Disabled")
    raises("DisabledException", kms.encrypt, KeyId=xks_key, Plaintext=b"x")
    raises("DisabledException", kms.decrypt, CiphertextBlob=blob)
    raises("DisabledException", kms.generate_data_key, KeyId=xks_key, KeySpec="AES_256")
    kms.enable_key(KeyId=xks_key)
    check(kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before", "enabled again")


def credential_rotation(store_id, xks_key):
    """Rotate to the proxy's second credential, then have the proxy retire it."""
    wrong = {"AccessKeyId": E["XKS_AKID"], "RawSecretAccessKey": "Q" * 44}
    raises("XksProxyIncorrectAuthenticationCredentialException", kms.update_custom_key_store,
           CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=wrong)
    second = {"AccessKeyId": E["XKS_AKID_2"], "RawSecretAccessKey": E["XKS_SECRET_2"]}
    kms.update_custom_key_store(CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=second)
    store = describe_store(store_id)
    check(store["XksProxyConfiguration"]["AccessKeyId"] == E["XKS_AKID_2"], store)
    check(store["ConnectionState"] == "CONNECTED", store)
    blob = kms.encrypt(KeyId=xks_key, Plaintext=b"rotated")["CiphertextBlob"]

    # The proxy drops the second credential (config rewritten, SIGHUP).
    os.replace(E["PROXY_CONFIG_ROTATED"], E["PROXY_CONFIG"])
    os.kill(int(E["PROXY_PID"]), signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        try:
            kms.encrypt(KeyId=xks_key, Plaintext=b"x")
        except kms.exceptions.KMSInvalidStateException:
            break
        check(time.monotonic() < deadline, "the proxy never dropped the credential")
        time.sleep(0.05)
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    check(kms.describe_key(KeyId=xks_key)["KeyMetadata"]["KeyState"] == "Unavailable",
          "Unavailable while disconnected")
    raises("KMSInvalidStateException", kms.decrypt, CiphertextBlob=blob)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    store = describe_store(store_id)
    check(store["ConnectionState"] == "FAILED", store)
    check(store["ConnectionErrorCode"] == "INVALID_CREDENTIALS", store)
    raises("CustomKeyStoreInvalidStateException", kms.connect_custom_key_store,
           CustomKeyStoreId=store_id)
    kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    first = {"AccessKeyId": E["XKS_AKID"], "RawSecretAccessKey": E["XKS_SECRET"]}
    kms.update_custom_key_store(CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=first)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)
    store = describe_store(store_id)
    check(store["ConnectionState"] == "CONNECTED" and "ConnectionErrorCode" not in store, store)
    check(kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"rotated", "decrypts again")
    raises("CustomKeyStoreHasCMKsException", lambda **kw: (
        kms.disconnect_custom_key_store(**kw), kms.delete_custom_key_store(**kw)),
        CustomKeyStoreId=store_id)
    kms.connect_custom_key_store(CustomKeyStoreId=store_id)


def main_phase():
    inbound_auth()
    store_failures()
    store_lifecycle()
    store_id, xks_key, aws_key = make_keys()
    request_id = crypto(xks_key, aws_key)
    re_encrypt(xks_key, aws_key)
    disabled_key(xks_key)
    credential_rotation(store_id, xks_key)
    context = {"restart": "yes"}
    blob = kms.encrypt(KeyId=xks_key, Plaintext=b"survives a restart",
                       EncryptionContext=context)["CiphertextBlob"]
    with open(E["SUITE_OUT"], "w") as out:
        json.dump({"key": xks_key, "store": store_id, "context": context,
                   "blob": base64.b64encode(blob).decode()}, out)
    print(f"REQUEST_ID {request_id}")


def after_restart_phase():
    with open(E["SUITE_OUT"]) as saved:
        saved = json.load(saved)
    check(describe_store(saved["store"])["ConnectionState"] == "CONNECTED", "state persisted")
    out = kms.decrypt(CiphertextBlob=base64.b64decode(saved["blob"]),
                      EncryptionContext=saved["context"])
    check(out["Plaintext"] == b"survives a restart", "decrypts after a restart")


if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "main"
    {"main": main_phase, "after-restart": after_restart_phase}[phase]()
    print(f"OK {phase}: {CHECKS} checks")
