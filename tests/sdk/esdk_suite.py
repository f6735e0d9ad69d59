#!/usr/bin/env python3
"""The AWS Encryption SDK for Python against xks-kms-local + xks-proxy + SoftHSM2 (driven by
tests/kms_local_sdks.rs).

The ESDK's KMS master key provider makes its own boto3 clients from a botocore session; the
session reaches the front through botocore's service-specific endpoint setting
(AWS_ENDPOINT_URL_KMS), as an application pointing the ESDK at a KMS-compatible endpoint would.
Messages are encrypted under the XKS key with an encryption context, under the XKS key plus an
AWS_KMS key (each alone decrypts), and decryption fails while the XKS key is disabled.

Environment: KMS_ENDPOINT, KMS_AKID, KMS_SECRET, XKS_ENDPOINT, XKS_PATH, XKS_AKID, XKS_SECRET,
XKS_KEY.
"""
import os

import aws_encryption_sdk
import boto3
import botocore.config
import botocore.exceptions
import botocore.session
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.exceptions import DecryptKeyError

E = os.environ
CHECKS = 0


def check(condition, what):
    global CHECKS
    if not condition:
        raise AssertionError(what)
    CHECKS += 1


def botocore_session():
    """A botocore session whose KMS clients go to the front, signed with its credential."""
    os.environ["AWS_ENDPOINT_URL_KMS"] = E["KMS_ENDPOINT"]
    session = botocore.session.Session()
    session.set_credentials(E["KMS_AKID"], E["KMS_SECRET"])
    session.set_config_variable("region", "us-east-1")
    # One attempt: a retried failure would hide which call failed and slow the suite.
    session.set_default_client_config(
        botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}))
    return session


SESSION = botocore_session()
kms = boto3.session.Session(botocore_session=SESSION).client("kms")
ESDK = aws_encryption_sdk.EncryptionSDKClient(
    commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def provider(*arns):
    return aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=list(arns), botocore_session=SESSION)


def make_keys():
    store = kms.create_custom_key_store(
        CustomKeyStoreName="esdk", CustomKeyStoreType="EXTERNAL_KEY_STORE",
        XksProxyUriEndpoint=E["XKS_ENDPOINT"], XksProxyUriPath=E["XKS_PATH"],
        XksProxyConnectivity="PUBLIC_ENDPOINT",
        XksProxyAuthenticationCredential={"AccessKeyId": E["XKS_AKID"],
                                          "RawSecretAccessKey": E["XKS_SECRET"]},
    )["CustomKeyStoreId"]
    kms.connect_custom_key_store(CustomKeyStoreId=store)
    xks = kms.create_key(Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store,
                         XksKeyId=E["XKS_KEY"])["KeyMetadata"]["Arn"]
    aws = kms.create_key(Description="esdk aws key")["KeyMetadata"]["Arn"]
    return xks, aws


def single_key(xks):
    context = {"purpose": "esdk-test", "tenant": "a"}
    message = os.urandom(10_000)
    ciphertext, header = ESDK.encrypt(source=message, key_provider=provider(xks),
                                      encryption_context=context)
    check(len(header.encrypted_data_keys) == 1, "one data key")
    (edk,) = header.encrypted_data_keys
    check(edk.key_provider.provider_id == "aws-kms", edk.key_provider)
    check(edk.key_provider.key_info.decode() == xks, edk.key_provider)
    plaintext, decrypted_header = ESDK.decrypt(source=ciphertext, key_provider=provider(xks))
    check(plaintext == message, "round trip")
    for name, value in context.items():
        check(decrypted_header.encryption_context.get(name) == value, "context kept")
    return ciphertext, header


def multi_key(xks, aws):
    context = {"purpose": "esdk-multi"}
    message = b"one message, two KMS keys"
    ciphertext, header = ESDK.encrypt(source=message, key_provider=provider(xks, aws),
                                      encryption_context=context)
    infos = {edk.key_provider.key_info.decode() for edk in header.encrypted_data_keys}
    check(infos == {xks, aws}, infos)
    for arn in (xks, aws):
        plaintext, _ = ESDK.decrypt(source=ciphertext, key_provider=provider(arn))
        check(plaintext == message, f"decrypts with {arn} alone")
    return ciphertext


def disabled(xks, aws, single, single_header, multi):
    """With the XKS key disabled, nothing it protects decrypts: the ESDK raises DecryptKeyError
    (for the message, and for the one data key with KMS's DisabledException as its cause)."""
    kms.disable_key(KeyId=xks)
    for ciphertext in (single, multi):
        try:
            ESDK.decrypt(source=ciphertext, key_provider=provider(xks))
        except DecryptKeyError as err:
            check("Unable to decrypt any data key" in str(err), err)
        else:
            raise AssertionError("decrypted with the XKS key disabled")
    # The master key itself: its DecryptKeyError is raised while handling the SDK's error.
    (edk,) = single_header.encrypted_data_keys
    try:
        provider(xks).master_key(xks).decrypt_data_key(edk, single_header.algorithm,
                                                       single_header.encryption_context)
    except DecryptKeyError as err:
        cause = err.__context__
        check(isinstance(cause, botocore.exceptions.ClientError), repr(cause))
        check(cause.response["Error"]["Code"] == "DisabledException", repr(cause))
    else:
        raise AssertionError("the master key decrypted with the key disabled")
    # The AWS_KMS key still opens the multi-key message.
    plaintext, _ = ESDK.decrypt(source=multi, key_provider=provider(aws))
    check(plaintext == b"one message, two KMS keys", "the AWS_KMS key still decrypts")
    kms.enable_key(KeyId=xks)
    plaintext, _ = ESDK.decrypt(source=single, key_provider=provider(xks))
    check(len(plaintext) == 10_000, "enabled again")


if __name__ == "__main__":
    xks_arn, aws_arn = make_keys()
    single, single_header = single_key(xks_arn)
    multi = multi_key(xks_arn, aws_arn)
    disabled(xks_arn, aws_arn, single, single_header, multi)
    print(f"OK esdk: {CHECKS} checks")
