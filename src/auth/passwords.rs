//! Password hashing (Argon2id, the crate's defaults: 19 MiB, 2 passes) on a few threads of
//! its own, each with its memory allocated once and kept.

use crate::error::ApiError;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A job for a password thread, given that thread's memory.
type Job = Box<dyn FnOnce(&mut [Block]) + Send>;

/// Threads that hash: as many as cores, at most four. Requests beyond that wait their turn.
///
/// Hashing on the request or blocking threads allocated and freed 19 MiB a time, which raised
/// glibc's mmap threshold so that every thread kept what it had freed: a rush's sign-ins took
/// the hub from 33 MiB to 0.8-1.1 GiB (73 MiB with the threshold fixed; BENCHMARKS.md).
fn workers() -> &'static mpsc::Sender<Job> {
    static WORKERS: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    WORKERS.get_or_init(|| {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("passwords-{n}"))
                .spawn(move || {
                    let mut memory = vec![Block::default(); Params::default().block_count()];
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password thread");
            }
        }
        jobs
    })
}

async fn on_password_thread<T: Send + 'static>(
    job: impl FnOnce(&mut [Block]) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    workers()
        .send(Box::new(move |memory| {
            let _ = answer.send(job(memory));
        }))
        .map_err(|_| ApiError::internal("no password thread is running"))?;
    answered
        .await
        .map_err(|_| ApiError::internal("a password thread failed"))
}

/// A new PHC string for `password`, with a random salt.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    on_password_thread(move |memory| hash_with(memory, &password))
        .await?
        .map_err(ApiError::internal)
}

/// Whether `password` matches the PHC string `hash` (false for a malformed one).
pub async fn verify_password(password: String, hash: String) -> Result<bool, ApiError> {
    on_password_thread(move |memory| verify_with(memory, &password, &hash)).await
}

fn hash_with(memory: &mut [Block], password: &str) -> password_hash::Result<String> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes)?;
    let (algorithm, version, params) =
        (Algorithm::default(), Version::default(), Params::default());
    let output = argon2_output(
        memory,
        password,
        algorithm,
        version,
        &params,
        salt.as_salt(),
    )?;
    Ok(PasswordHash {
        algorithm: algorithm.ident(),
        version: Some(version.into()),
        params: ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

/// As `PasswordVerifier::verify_password` does it, in the thread's memory; `Output`
/// compares in constant time.
fn verify_with(memory: &mut [Block], password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let computed = (|| {
        let algorithm = Algorithm::try_from(parsed.algorithm)?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        let params = Params::try_from(&parsed)?;
        argon2_output(memory, password, algorithm, version, &params, salt)
    })();
    computed.is_ok_and(|computed| computed == expected)
}

fn argon2_output(
    memory: &mut [Block],
    password: &str,
    algorithm: Algorithm,
    version: Version,
    params: &Params,
    salt: Salt<'_>,
) -> password_hash::Result<Output> {
    let mut salt_buffer = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buffer)?;
    let blocks = params.block_count();
    // Hashes made with other parameters (none are, today) get memory of their own.
    let mut own = Vec::new();
    let memory = if memory.len() >= blocks {
        &mut memory[..blocks]
    } else {
        own.resize(blocks, Block::default());
        &mut own[..]
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let length = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    Output::init_with(length, |out| {
        Ok(argon2.hash_password_into_with_memory(password.as_bytes(), salt, out, &mut *memory)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_verify_both_ways_with_the_crates_own() {
        let mut memory = vec![Block::default(); Params::default().block_count()];
        let ours = hash_with(&mut memory, "correct horse").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(verify_with(&mut memory, "correct horse", &ours));
        assert!(!verify_with(&mut memory, "correct horsf", &ours));
        // The crate's own verifier accepts ours, and ours accepts hashes stored before.
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        let salt = SaltString::encode_b64(b"sixteen byte sal").unwrap();
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with(&mut memory, "battery staple", &theirs));
        assert!(!verify_with(&mut memory, "battery stapler", &theirs));
        assert!(!verify_with(&mut memory, "x", "not a hash"));
    }

    #[actix_web::test]
    async fn the_password_threads_answer() {
        let hash = hash_password("a passphrase".into()).await.unwrap();
        assert!(
            verify_password("a passphrase".into(), hash.clone())
                .await
                .unwrap()
        );
        assert!(!verify_password("another".into(), hash).await.unwrap());
    }
}
