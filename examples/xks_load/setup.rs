//! Fail-fast requests before the load starts: a wrong URL, certificate or credential ends the
//! run with one message instead of a count of errors. For `--operation decrypt` this also
//! encrypts once and checks one decrypt round trip, giving the ciphertext the workers decrypt;
//! for `--operation ping` it checks one `GET /ping`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hyper::body::Bytes;

use crate::args::Operation;
use crate::bodies::BodyTemplate;
use crate::client::{Connection, exchange, ping};
use crate::signer::Signer;
use crate::target::Target;

/// What to send: the request path and body for `operation` (for `ping`, the body is unused).
pub(crate) struct Plan {
    pub(crate) path: String,
    pub(crate) body: BodyTemplate,
}

/// Sends the setup request(s) for `operation` on `conn` and returns what the workers send.
pub(crate) async fn prepare(
    operation: Operation,
    conn: &mut Connection,
    target: &Target,
    signer: &Signer,
    run_id: &str,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Plan, String> {
    let (path, body) = match operation {
        Operation::Encrypt => (&target.encrypt_path, BodyTemplate::encrypt(plaintext, aad)),
        Operation::Metadata => (&target.metadata_path, BodyTemplate::metadata()),
        Operation::Health => (&target.health_path, BodyTemplate::health()),
        Operation::Ping => {
            check_ping(conn, target).await?;
            return Ok(Plan {
                path: target.ping_path.clone(),
                body: BodyTemplate::health(),
            });
        }
        Operation::Decrypt => {
            let body = prepare_decrypt(conn, target, signer, run_id, plaintext, aad).await?;
            return Ok(Plan {
                path: target.decrypt_path.clone(),
                body,
            });
        }
    };
    let setup = body.render(&format!("{run_id}-setup-1"));
    expect_ok(conn, target, signer, path, setup, "setup request").await?;
    Ok(Plan {
        path: path.clone(),
        body,
    })
}

/// Encrypts once, builds the Decrypt body for that result and checks one decrypt round trip.
async fn prepare_decrypt(
    conn: &mut Connection,
    target: &Target,
    signer: &Signer,
    run_id: &str,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<BodyTemplate, String> {
    let encrypt = BodyTemplate::encrypt(plaintext, aad).render(&format!("{run_id}-setup-1"));
    let reply = expect_ok(
        conn,
        target,
        signer,
        &target.encrypt_path,
        encrypt,
        "setup Encrypt",
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| format!("setup Encrypt reply: {e}"))?;
    let body = BodyTemplate::decrypt(&json, aad)?;

    let decrypt = body.render(&format!("{run_id}-setup-2"));
    let reply = expect_ok(
        conn,
        target,
        signer,
        &target.decrypt_path,
        decrypt,
        "setup Decrypt",
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| format!("setup Decrypt reply: {e}"))?;
    if json["plaintext"].as_str() != Some(B64.encode(plaintext).as_str()) {
        return Err("setup Decrypt did not return the encrypted plaintext".into());
    }
    Ok(body)
}

/// Sends one `GET /ping` and requires HTTP 200.
pub(crate) async fn check_ping(conn: &mut Connection, target: &Target) -> Result<(), String> {
    let (status, reply) = ping(conn, target)
        .await
        .map_err(|e| format!("setup GET {}: {e}", target.ping_path))?;
    if status != 200 {
        return Err(format!(
            "setup GET {} returned HTTP {status}: {}",
            target.ping_path,
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(())
}

/// Sends one request and requires HTTP 200; returns the body.
async fn expect_ok(
    conn: &mut Connection,
    target: &Target,
    signer: &Signer,
    path: &str,
    body: String,
    what: &str,
) -> Result<Bytes, String> {
    let (status, reply) = exchange(conn, target, signer, path, body)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{what} on {path} returned HTTP {status}: {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(reply)
}
