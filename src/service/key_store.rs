//! A client's key directory: its secret keys and evaluation keys kept between runs, so a
//! returning client announces its keys by [`KeyId`] and skips their upload when the server
//! still has them cached (see [`crate::key_cache`]).
//!
//! One file per key set, named by the parameters' id (never by anything the server chose):
//!
//! - `bfv-<params>.sk`, `bfv-<params>.pk`: the BFV secret key and public key (hybrid mode);
//! - `ckks-<params>.sk`: the CKKS secret key of a parameter set;
//! - `ckks-<params>-<galois>.evk`: the CKKS public, relinearization and Galois keys for
//!   one set of Galois elements (what one model needs), `<galois>` a hash of the elements.
//!
//! Every file is a magic and version, its kind, a 32-byte tag, and length-prefixed blobs
//! in the wire format of [`cipherml_he::serialize`]. The tag of a public file is the
//! [`KeyId`] of its keys, announced without reading the rest; the tag of a secret-key file
//! is a checksum. Files are created with mode 0600 (in a directory created 0700), written
//! to a temporary name and renamed into place. Reading treats a file as untrusted: its size
//! is checked before reading, a secret-key file readable by others is refused, the tag is
//! checked, every key is decoded against the parameters, and a public key must belong to
//! the secret key (an encryption with it decrypts). Each failure is a [`KeyFileError`]
//! naming the file. Buffers that held a secret key are zeroized. A key directory is meant
//! for one client at a time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cipherml_he::bfv::BfvParameters;
use cipherml_he::ckks::CkksParameters;
use cipherml_he::rlwe::{GaloisKeys, PublicKey, RelinKey, RlweContext, SecretKey};
use cipherml_mpc::prg::os_rng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::key_cache::KeyId;

/// Magic and version of a key file.
const MAGIC: [u8; 8] = *b"CMLKEY\x00\x01";
/// Magic, kind, blob count, tag.
const HEADER_LEN: usize = 8 + 1 + 1 + 32;
/// Largest secret-key file read (a secret key at `N = 32768` takes 8 KiB).
pub const MAX_SECRET_FILE: u64 = 1 << 20;
/// Largest public-key file read (three keys of at most 64 MiB each, the server's limit).
pub const MAX_PUBLIC_FILE: u64 = 3 * (64 << 20) + 4096;
/// Most key ids a client announces in its hello.
pub const MAX_ANNOUNCED_KEYS: usize = 64;

/// What a key file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum FileKind {
    Secret = 1,
    BfvPublic = 2,
    CkksEvaluation = 3,
}

impl FileKind {
    fn blobs(self) -> usize {
        match self {
            FileKind::Secret | FileKind::BfvPublic => 1,
            FileKind::CkksEvaluation => 3,
        }
    }

    fn max_len(self) -> u64 {
        match self {
            FileKind::Secret => MAX_SECRET_FILE,
            _ => MAX_PUBLIC_FILE,
        }
    }
}

/// Errors of a key directory; each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file or directory could not be read or written.
    #[error("key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file larger than a key file of its kind may be (not read).
    #[error("key file {}: {len} bytes, more than the {max} a file of its kind may have", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A secret-key file that others may read or write.
    #[error("key file {}: mode {mode:04o} gives others access to a secret key (must be 0600)", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a key file of the expected version and kind.
    #[error("key file {}: not a cipherml key file of kind {expected} (magic {magic:02x?}, kind {kind}, {blobs} blobs)", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The kind expected.
        expected: u8,
        /// The first 8 bytes found (magic and version).
        magic: [u8; 8],
        /// The kind found.
        kind: u8,
        /// The number of keys found.
        blobs: u8,
    },
    /// A file whose length does not match what its header announces.
    #[error("key file {}: {len} bytes, its header announces {expected}", path.display())]
    Length {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// The size its header and blob lengths imply (as far as they could be read).
        expected: u64,
    },
    /// A file whose content does not match its tag (corrupted).
    #[error("key file {}: corrupted (tag {stored}, content hashes to {computed}); delete it to generate new keys", path.display())]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// The stored tag (hex, first 8 bytes).
        stored: String,
        /// The tag of the content (hex, first 8 bytes).
        computed: String,
    },
    /// A key that does not decode for the parameters.
    #[error("key file {}: {what} does not decode for parameters {params_id:016x}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Which key.
        what: &'static str,
        /// The parameters' id.
        params_id: u64,
        /// Why.
        #[source]
        source: Box<cipherml_he::Error>,
    },
    /// Galois keys for other elements than the file name promises.
    #[error("key file {}: Galois keys for elements {found:?}, expected {expected:?}", path.display())]
    GaloisElements {
        /// The file.
        path: PathBuf,
        /// The elements found.
        found: Vec<usize>,
        /// The elements expected.
        expected: Vec<usize>,
    },
    /// A public key that does not belong to the stored secret key.
    #[error("key file {}: its public key does not belong to the secret key in {}", path.display(), secret.display())]
    NotMatching {
        /// The public file.
        path: PathBuf,
        /// The secret-key file.
        secret: PathBuf,
    },
    /// Key generation failed (e.g. Galois elements the parameters do not allow).
    #[error("generating keys for {}: {source}", path.display())]
    Generate {
        /// The file that was to hold them.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<cipherml_he::Error>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn short(tag: &[u8; 32]) -> String {
    tag[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The checksum of a secret-key file's content.
fn secret_tag(sk: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cipherml secret key file\0");
    h.update(sk);
    h.finalize().into()
}

/// A key file's bytes: header, then each blob with its length.
fn encode_file(kind: FileKind, tag: &[u8; 32], blobs: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let len = HEADER_LEN + blobs.iter().map(|b| 8 + b.len()).sum::<usize>();
    let mut v = Zeroizing::new(Vec::with_capacity(len));
    v.extend_from_slice(&MAGIC);
    v.push(kind as u8);
    v.push(blobs.len() as u8);
    v.extend_from_slice(tag);
    for b in blobs {
        v.extend_from_slice(&(b.len() as u64).to_le_bytes());
        v.extend_from_slice(b);
    }
    v
}

/// Checks a header; returns the tag.
fn check_header(path: &Path, bytes: &[u8], kind: FileKind) -> Result<[u8; 32], KeyFileError> {
    let format = || KeyFileError::Format {
        path: path.to_path_buf(),
        expected: kind as u8,
        magic: std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0)),
        kind: bytes.get(8).copied().unwrap_or(0),
        blobs: bytes.get(9).copied().unwrap_or(0),
    };
    if bytes.len() < HEADER_LEN
        || bytes[..8] != MAGIC
        || bytes[8] != kind as u8
        || bytes[9] as usize != kind.blobs()
    {
        return Err(format());
    }
    Ok(bytes[10..HEADER_LEN].try_into().expect("32 bytes"))
}

/// Splits a whole file into its tag and blobs (lengths checked against the file's).
fn decode_file<'a>(
    path: &Path,
    bytes: &'a [u8],
    kind: FileKind,
) -> Result<([u8; 32], Vec<&'a [u8]>), KeyFileError> {
    let tag = check_header(path, bytes, kind)?;
    let mut rest = &bytes[HEADER_LEN..];
    let mut blobs = Vec::with_capacity(kind.blobs());
    let length = |expected: u64| KeyFileError::Length {
        path: path.to_path_buf(),
        len: bytes.len() as u64,
        expected,
    };
    for _ in 0..kind.blobs() {
        let at = (bytes.len() - rest.len()) as u64;
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return Err(length(at + 8));
        };
        let len = u64::from_le_bytes(*len);
        if len > tail.len() as u64 {
            return Err(length(at.saturating_add(8).saturating_add(len)));
        }
        let (blob, tail) = tail.split_at(len as usize);
        blobs.push(blob);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(length((bytes.len() - rest.len()) as u64));
    }
    Ok((tag, blobs))
}

/// Reads a whole key file, its size checked before reading (a secret one also its
/// permissions), into a buffer zeroized on drop.
fn read_file(path: &Path, kind: FileKind) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = File::open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    let max = kind.max_len();
    if meta.len() > max {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
            max,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if kind == FileKind::Secret && mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Exactly the announced size is reserved, so the buffer never moves (no copy of a
    // secret left behind); a file that grew meanwhile is refused.
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    file.take(max + 1).read_to_end(&mut buf).map_err(io(path))?;
    if buf.len() as u64 > max {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            len: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// Writes `bytes` to `path` through a temporary file created with mode 0600 in the same
/// directory, then renamed into place.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{:016x}", os_rng().next_u64()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// A BFV key pair from a key directory (or freshly generated).
pub struct StoredBfv {
    /// The secret key.
    pub sk: Arc<SecretKey>,
    /// The public key, as uploaded.
    pub pk: Vec<u8>,
    /// Its id.
    pub id: KeyId,
}

/// CKKS keys for one parameter set and set of Galois elements, from a key directory (or
/// freshly generated).
pub struct StoredCkks {
    /// The secret key.
    pub sk: Arc<SecretKey>,
    /// The public key, as uploaded.
    pub pk: Vec<u8>,
    /// The relinearization key, as uploaded.
    pub rlk: Vec<u8>,
    /// The Galois keys, as uploaded.
    pub galois: Vec<u8>,
    /// Their id.
    pub id: KeyId,
}

impl std::fmt::Debug for StoredBfv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredBfv")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StoredCkks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCkks")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Fresh BFV keys from the OS CSPRNG (nothing stored).
pub fn generate_bfv(params: &Arc<BfvParameters>) -> StoredBfv {
    let mut rng = os_rng();
    let sk = Arc::new(SecretKey::random(params.context(), &mut rng));
    let pk = PublicKey::new(&sk, &mut rng).to_bytes(params.context());
    StoredBfv {
        id: KeyId::bfv(&pk),
        sk,
        pk,
    }
}

/// Fresh CKKS keys from the OS CSPRNG (nothing stored).
pub fn generate_ckks(
    params: &Arc<CkksParameters>,
    galois: &[usize],
) -> Result<StoredCkks, cipherml_he::Error> {
    let sk = Arc::new(SecretKey::random(params.context(), &mut os_rng()));
    ckks_from_secret(params, sk, galois)
}

fn ckks_from_secret(
    params: &Arc<CkksParameters>,
    sk: Arc<SecretKey>,
    galois: &[usize],
) -> Result<StoredCkks, cipherml_he::Error> {
    let mut rng = os_rng();
    let ctx = params.context();
    let pk = PublicKey::new(&sk, &mut rng).to_bytes(ctx);
    let rlk = RelinKey::new(&sk, &mut rng).to_bytes(ctx);
    let galois = GaloisKeys::new(&sk, galois, &mut rng)?.to_bytes(ctx);
    Ok(StoredCkks {
        id: KeyId::ckks(&pk, &rlk, &galois),
        sk,
        pk,
        rlk,
        galois,
    })
}

/// A client's key directory (see the module documentation).
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// Opens `dir`, creating it (mode 0700) if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyFileError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the BFV secret key for `params`.
    pub fn bfv_secret_path(&self, params: &BfvParameters) -> PathBuf {
        self.dir.join(format!("bfv-{:016x}.sk", params.id()))
    }

    /// The file of the BFV public key for `params`.
    pub fn bfv_public_path(&self, params: &BfvParameters) -> PathBuf {
        self.dir.join(format!("bfv-{:016x}.pk", params.id()))
    }

    /// The file of the CKKS secret key for `params`.
    pub fn ckks_secret_path(&self, params: &CkksParameters) -> PathBuf {
        self.dir.join(format!("ckks-{:016x}.sk", params.id()))
    }

    /// The file of the CKKS evaluation keys for `params` and the Galois elements `galois`.
    pub fn ckks_evaluation_path(&self, params: &CkksParameters, galois: &[usize]) -> PathBuf {
        let mut h = Sha256::new();
        for g in galois {
            h.update((*g as u64).to_le_bytes());
        }
        let digest: [u8; 32] = h.finalize().into();
        self.dir
            .join(format!("ckks-{:016x}-{}.evk", params.id(), short(&digest)))
    }

    /// The ids of the public keys in the directory (read from the files' headers; files
    /// that are not key files are skipped), at most [`MAX_ANNOUNCED_KEYS`]: what a client
    /// announces in its hello.
    pub fn held_ids(&self) -> Vec<KeyId> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut files: Vec<(PathBuf, FileKind)> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?;
                let kind = if name.starts_with("ckks-") && name.ends_with(".evk") {
                    FileKind::CkksEvaluation
                } else if name.starts_with("bfv-") && name.ends_with(".pk") {
                    FileKind::BfvPublic
                } else {
                    return None;
                };
                Some((p, kind))
            })
            .collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
            .into_iter()
            .filter_map(|(p, kind)| {
                let mut head = [0u8; HEADER_LEN];
                File::open(&p).ok()?.read_exact(&mut head).ok()?;
                check_header(&p, &head, kind).ok().map(KeyId)
            })
            .take(MAX_ANNOUNCED_KEYS)
            .collect()
    }

    /// Loads the secret key of `path` for `ctx`, or generates and stores one if there is
    /// no such file; says whether it was generated.
    fn secret(
        &self,
        path: &Path,
        ctx: &Arc<RlweContext>,
    ) -> Result<(Arc<SecretKey>, bool), KeyFileError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let sk = Arc::new(SecretKey::random(ctx, &mut os_rng()));
                let bytes = Zeroizing::new(sk.to_bytes());
                write_file(
                    path,
                    &encode_file(FileKind::Secret, &secret_tag(&bytes), &[&bytes]),
                )?;
                return Ok((sk, true));
            }
            Err(e) => return Err(io(path)(e)),
            Ok(_) => {}
        }
        let file = read_file(path, FileKind::Secret)?;
        let (tag, blobs) = decode_file(path, &file, FileKind::Secret)?;
        let computed = secret_tag(blobs[0]);
        if computed != tag {
            return Err(KeyFileError::Corrupted {
                path: path.to_path_buf(),
                stored: short(&tag),
                computed: short(&computed),
            });
        }
        let sk = SecretKey::from_bytes(ctx, blobs[0]).map_err(|source| KeyFileError::Decode {
            path: path.to_path_buf(),
            what: "secret key",
            params_id: ctx.id(),
            source: Box::new(source),
        })?;
        Ok((Arc::new(sk), false))
    }

    /// The BFV keys for `params`: loaded from the directory, or generated (OS CSPRNG) and
    /// stored if the directory has none.
    pub fn bfv(&self, params: &Arc<BfvParameters>) -> Result<StoredBfv, KeyFileError> {
        let (sk_path, pk_path) = (self.bfv_secret_path(params), self.bfv_public_path(params));
        let (sk, fresh) = self.secret(&sk_path, params.context())?;
        if !fresh && pk_path.exists() {
            let file = read_file(&pk_path, FileKind::BfvPublic)?;
            let (tag, blobs) = decode_file(&pk_path, &file, FileKind::BfvPublic)?;
            let id = KeyId::bfv(blobs[0]);
            if id.0 != tag {
                return Err(KeyFileError::Corrupted {
                    path: pk_path,
                    stored: short(&tag),
                    computed: short(&id.0),
                });
            }
            let decode = |source| KeyFileError::Decode {
                path: pk_path.clone(),
                what: "public key",
                params_id: params.id(),
                source: Box::new(source),
            };
            let pk = PublicKey::from_bytes(params.context(), blobs[0]).map_err(decode)?;
            if !bfv_pair(params, &sk, pk) {
                return Err(KeyFileError::NotMatching {
                    path: pk_path,
                    secret: sk_path,
                });
            }
            return Ok(StoredBfv {
                sk,
                pk: blobs[0].to_vec(),
                id,
            });
        }
        let pk = PublicKey::new(&sk, &mut os_rng()).to_bytes(params.context());
        let id = KeyId::bfv(&pk);
        write_file(&pk_path, &encode_file(FileKind::BfvPublic, &id.0, &[&pk]))?;
        Ok(StoredBfv { sk, pk, id })
    }

    /// The CKKS keys for `params` with Galois keys for exactly `galois`: loaded from the
    /// directory, or generated (OS CSPRNG) and stored if it has none.
    pub fn ckks(
        &self,
        params: &Arc<CkksParameters>,
        galois: &[usize],
    ) -> Result<StoredCkks, KeyFileError> {
        let sk_path = self.ckks_secret_path(params);
        let evk_path = self.ckks_evaluation_path(params, galois);
        let (sk, fresh) = self.secret(&sk_path, params.context())?;
        if !fresh && evk_path.exists() {
            return self.load_ckks(params, galois, sk, &sk_path, &evk_path);
        }
        let keys =
            ckks_from_secret(params, sk, galois).map_err(|source| KeyFileError::Generate {
                path: evk_path.clone(),
                source: Box::new(source),
            })?;
        write_file(
            &evk_path,
            &encode_file(
                FileKind::CkksEvaluation,
                &keys.id.0,
                &[&keys.pk, &keys.rlk, &keys.galois],
            ),
        )?;
        Ok(keys)
    }

    fn load_ckks(
        &self,
        params: &Arc<CkksParameters>,
        galois: &[usize],
        sk: Arc<SecretKey>,
        sk_path: &Path,
        path: &Path,
    ) -> Result<StoredCkks, KeyFileError> {
        let file = read_file(path, FileKind::CkksEvaluation)?;
        let (tag, blobs) = decode_file(path, &file, FileKind::CkksEvaluation)?;
        let id = KeyId::ckks(blobs[0], blobs[1], blobs[2]);
        if id.0 != tag {
            return Err(KeyFileError::Corrupted {
                path: path.to_path_buf(),
                stored: short(&tag),
                computed: short(&id.0),
            });
        }
        let ctx = params.context();
        let decode = |what| {
            move |source| KeyFileError::Decode {
                path: path.to_path_buf(),
                what,
                params_id: params.id(),
                source: Box::new(source),
            }
        };
        let pk = PublicKey::from_bytes(ctx, blobs[0]).map_err(decode("public key"))?;
        RelinKey::from_bytes(ctx, blobs[1]).map_err(decode("relinearization key"))?;
        let gk = GaloisKeys::from_bytes(ctx, blobs[2]).map_err(decode("Galois keys"))?;
        let found: Vec<usize> = gk.elements().collect();
        if found != galois {
            return Err(KeyFileError::GaloisElements {
                path: path.to_path_buf(),
                found,
                expected: galois.to_vec(),
            });
        }
        if !ckks_pair(params, &sk, pk) {
            return Err(KeyFileError::NotMatching {
                path: path.to_path_buf(),
                secret: sk_path.to_path_buf(),
            });
        }
        Ok(StoredCkks {
            sk,
            pk: blobs[0].to_vec(),
            rlk: blobs[1].to_vec(),
            galois: blobs[2].to_vec(),
            id,
        })
    }
}

/// Whether `pk` belongs to `sk` (BFV): an encryption under `pk` decrypts under `sk`.
fn bfv_pair(params: &Arc<BfvParameters>, sk: &Arc<SecretKey>, pk: PublicKey) -> bool {
    use cipherml_he::bfv::{Decryptor, Encoder, Encryptor};
    let probe: Vec<u64> = (1..=16).collect();
    let check = || -> Result<bool, cipherml_he::Error> {
        let enc = Encryptor::new(params, pk)?;
        let dec = Decryptor::new(params, sk.clone())?;
        let ct = enc.encrypt(
            &Encoder::new(params).encode_coeffs_u64(&probe)?,
            &mut os_rng(),
        )?;
        let back = dec.decrypt(&ct)?;
        Ok(back.coefficients().get(..probe.len()) == Some(&probe[..]))
    };
    check().unwrap_or(false)
}

/// Whether `pk` belongs to `sk` (CKKS): an encryption under `pk` decrypts under `sk`.
fn ckks_pair(params: &Arc<CkksParameters>, sk: &Arc<SecretKey>, pk: PublicKey) -> bool {
    use cipherml_he::ckks::{Decryptor, Encryptor};
    let probe = [0.25, -0.5, 0.75, 1.0];
    let check = || -> Result<bool, cipherml_he::Error> {
        let enc = Encryptor::new(params, pk)?;
        let dec = Decryptor::new(params, sk.clone())?;
        let back = dec.decrypt_f64(&enc.encrypt_f64(&probe, &mut os_rng())?)?;
        Ok(probe.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-3))
    };
    check().unwrap_or(false)
}
