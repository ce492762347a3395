//! Clients that keep their keys: the key directory (files, permissions, corruption) and the
//! server's key cache (one-round-trip set-up of a returning client, LRU bounds, ids that
//! were never uploaded).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cipherml::client::{Client, ClientOptions};
use cipherml::data::{data_dir, read_npy};
use cipherml::he::bfv::BfvParameters;
use cipherml::key_cache::{CachedKeys, KeyCache, KeyId};
use cipherml::key_store::{generate_bfv, KeyFileError, KeyStore};
use cipherml::mpc::net::{ChannelConfig, TcpChannel};
use cipherml::nn::{load_onnx, CkksModel, Sequential};
use cipherml::protocol::{recv, send, ClientMsg, ProtocolError, ServerMsg, PROTOCOL_VERSION};
use cipherml::server::{ModeChoice, ModelSpec, Server, ServerConfig};
use cipherml::tensor::SessionConfig;
use ndarray::{ArrayD, Axis};

fn model(file: &str) -> Sequential {
    load_onnx(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(file),
    )
    .unwrap()
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cipherml-keys-{}-{name}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves `specs` on a free port; returns the address and the server's key cache.
fn start(specs: Vec<ModelSpec>) -> (String, Arc<KeyCache>) {
    start_with_cache(specs, Arc::new(KeyCache::default()))
}

fn start_with_cache(specs: Vec<ModelSpec>, cache: Arc<KeyCache>) -> (String, Arc<KeyCache>) {
    let server = Server::bind_models("127.0.0.1:0", specs, ServerConfig::default())
        .unwrap()
        .with_key_cache(cache);
    let addr = server.local_addr().to_string();
    let cache = server.key_cache().clone();
    std::thread::spawn(move || server.run());
    (addr, cache)
}

fn options(dir: Option<&Path>) -> ClientOptions {
    ClientOptions {
        key_dir: dir.map(Path::to_path_buf),
        ..Default::default()
    }
}

fn argmax(v: &ArrayD<f64>) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

fn images(n: usize) -> Vec<ArrayD<f64>> {
    let xs = read_npy(data_dir().join("digits_test_x.npy"))
        .unwrap()
        .to_f64();
    (0..n)
        .map(|i| xs.index_axis(Axis(0), i).to_owned())
        .collect()
}

/// Runs `xs` through `client` and checks each class against the plaintext model's.
fn infer_and_check(client: &mut Client, name: &str, plain: &Sequential, xs: &[ArrayD<f64>]) {
    for (i, x) in xs.iter().enumerate() {
        let got = client.infer(name, x).unwrap();
        let want = plain.predict(x).unwrap();
        assert_eq!(argmax(&got), argmax(&want), "{name}: image {i}");
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn files_with_extension(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    v.sort();
    v
}

#[test]
fn returning_ckks_client_sets_up_in_one_round_trip_without_upload() {
    let plain = model("digits_square_mlp.onnx");
    let (addr, cache) = start(vec![
        ModelSpec::new("sq", plain.clone()).with_mode(ModeChoice::CkksPublicWeights)
    ]);
    let dir = TempDir::new("ckks");
    let xs = images(3);

    // First run: keys generated, stored and uploaded (and cached by the server).
    let mut first = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
    assert!(first.cached_keys().is_empty());
    infer_and_check(&mut first, "sq", &plain, &xs);
    let first_stats = first.stats();
    first.close().unwrap();
    let evk = files_with_extension(&dir.0, "evk");
    assert_eq!(evk.len(), 1, "one evaluation-key file: {evk:?}");
    let key_bytes = file_len(&evk[0]);
    assert!(
        first_stats.bytes_sent > key_bytes,
        "the first run uploads its keys: {} bytes sent, keys {key_bytes}",
        first_stats.bytes_sent
    );
    let after_first = cache.stats();
    assert_eq!(after_first.entries, 1);
    assert_eq!(after_first.insertions, 1);
    assert!(after_first.bytes > 0 && after_first.bytes <= cache.bounds().1);

    // Second run, a new client with the same key directory: the set-up is the hello alone.
    let mut second = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
    let setup = second.stats();
    assert_eq!(setup.rounds_sent, 1, "set-up flights: {setup:?}");
    assert_eq!(setup.messages_sent, 1, "{setup:?}");
    assert_eq!(setup.messages_received, 1, "{setup:?}");
    assert!(
        setup.bytes_sent < 4096,
        "no key in the set-up: {} bytes sent",
        setup.bytes_sent
    );
    assert_eq!(second.cached_keys().len(), 1, "the server had the keys");
    assert!(!second.is_party_set_up(), "no OT set-up for a CKKS model");
    let hits = cache.stats().hits;
    assert!(hits > after_first.hits, "cache hit: {:?}", cache.stats());
    infer_and_check(&mut second, "sq", &plain, &xs);
    let total = second.stats();
    // The inferences alone: what the second run sends is the first run's minus the keys.
    assert!(
        total.bytes_sent + key_bytes / 2 < first_stats.bytes_sent,
        "no upload: {} bytes sent, the first run {}",
        total.bytes_sent,
        first_stats.bytes_sent
    );
    assert!(total.bytes_sent < key_bytes / 2, "{total:?}");
    println!(
        "CKKS: first run {} B sent / {} flights; returning set-up {} B sent, {} B received, {} flight; 3 inferences {} B sent",
        first_stats.bytes_sent,
        first_stats.rounds_sent,
        setup.bytes_sent,
        setup.bytes_received,
        setup.rounds_sent,
        total.bytes_sent - setup.bytes_sent
    );
    second.close().unwrap();
    assert_eq!(cache.stats().insertions, 1, "nothing uploaded again");

    // A client with fresh keys still works, and its keys are not cached.
    let mut fresh = Client::connect_with(&addr, &options(None)).unwrap();
    infer_and_check(&mut fresh, "sq", &plain, &xs[..1]);
    assert!(fresh.stats().bytes_sent > key_bytes);
    fresh.close().unwrap();
    assert_eq!(cache.stats().entries, 1);
    assert_eq!(cache.stats().insertions, 1);
}

#[test]
fn returning_hybrid_client_reuses_its_public_key_and_sets_up_ot_lazily() {
    let plain = model("digits_mlp.onnx");
    let (addr, cache) = start(vec![
        ModelSpec::new("mlp", plain.clone()).with_mode(ModeChoice::Hybrid)
    ]);
    let dir = TempDir::new("hybrid");
    let xs = images(2);

    let mut first = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
    let hello = first.stats();
    assert_eq!(hello.rounds_sent, 1, "{hello:?}");
    assert!(!first.is_party_set_up());
    infer_and_check(&mut first, "mlp", &plain, &xs[..1]);
    assert!(first.is_party_set_up());
    let first_one = first.stats().since(&hello);
    infer_and_check(&mut first, "mlp", &plain, &xs[1..]);
    let one_inference = first.stats().since(&hello).since(&first_one);
    first.close().unwrap();
    let pk_file = files_with_extension(&dir.0, "pk");
    assert_eq!(pk_file.len(), 1, "{pk_file:?}");
    let pk_bytes = file_len(&pk_file[0]);
    assert_eq!(cache.stats().entries, 1, "the BFV public key is cached");

    let mut second = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
    let setup = second.stats();
    assert_eq!(setup.rounds_sent, 1, "{setup:?}");
    assert_eq!((setup.messages_sent, setup.messages_received), (1, 1));
    assert!(setup.bytes_sent < 4096, "{setup:?}");
    assert_eq!(second.cached_keys().len(), 1);
    infer_and_check(&mut second, "mlp", &plain, &xs[..1]);
    let second_one = second.stats().since(&setup);
    // The first hybrid inference of a session carries the OT set-up; the returning client
    // skips the public key.
    assert!(
        second_one.bytes_sent + pk_bytes / 2 < first_one.bytes_sent,
        "first inference: {} B sent returning, {} B the first time (public key {pk_bytes} B)",
        second_one.bytes_sent,
        first_one.bytes_sent
    );
    assert!(second_one.rounds_sent > one_inference.rounds_sent);
    println!(
        "hybrid: returning set-up {} B sent / {} flight; first inference {} flights, {} B sent, {} B received (first run {} flights, {} B sent); later inferences {} flights, {} B sent, {} B received",
        setup.bytes_sent,
        setup.rounds_sent,
        second_one.rounds_sent,
        second_one.bytes_sent,
        second_one.bytes_received,
        first_one.rounds_sent,
        first_one.bytes_sent,
        one_inference.rounds_sent,
        one_inference.bytes_sent,
        one_inference.bytes_received
    );
    second.close().unwrap();
    assert_eq!(cache.stats().insertions, 1);
}

#[test]
fn key_files_are_private_and_loaded_back() {
    let dir = TempDir::new("files");
    let store = KeyStore::open(dir.0.join("nested")).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.dir()), 0o700);
    let params = BfvParameters::new(&SessionConfig::default().bfv_literal()).unwrap();
    let a = store.bfv(&params).unwrap();
    assert_eq!(mode(&store.bfv_secret_path(&params)), 0o600);
    assert_eq!(mode(&store.bfv_public_path(&params)), 0o600);
    let b = store.bfv(&params).unwrap();
    assert_eq!(a.id, b.id, "loaded back, not regenerated");
    assert_eq!(a.pk, b.pk);
    assert_eq!(store.held_ids(), vec![a.id]);

    let (cm, ckks) = CkksModel::for_model(&model("digits_square_mlp.onnx")).unwrap();
    let c = store.ckks(&ckks, cm.galois_elements()).unwrap();
    assert_eq!(mode(&store.ckks_secret_path(&ckks)), 0o600);
    let path = store.ckks_evaluation_path(&ckks, cm.galois_elements());
    assert_eq!(mode(&path), 0o600);
    let d = store.ckks(&ckks, cm.galois_elements()).unwrap();
    assert_eq!((c.id, &c.galois), (d.id, &d.galois));
    let mut held = store.held_ids();
    held.sort_by_key(|id| id.0);
    let mut want = vec![a.id, c.id];
    want.sort_by_key(|id| id.0);
    assert_eq!(held, want);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(store.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

/// Flips one bit at `at` (from the end if negative).
fn flip(path: &Path, at: i64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = if at < 0 {
        bytes.len() - at.unsigned_abs() as usize
    } else {
        at as usize
    };
    bytes[i] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_key_files_give_typed_errors_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let store = KeyStore::open(&dir.0).unwrap();
    let params = BfvParameters::new(&SessionConfig::default().bfv_literal()).unwrap();
    store.bfv(&params).unwrap();
    let (sk_path, pk_path) = (
        store.bfv_secret_path(&params),
        store.bfv_public_path(&params),
    );
    let names = |e: &KeyFileError, p: &Path| e.to_string().contains(&p.display().to_string());

    // A bit flipped in the public key.
    let pristine_pk = std::fs::read(&pk_path).unwrap();
    flip(&pk_path, -3);
    match store.bfv(&params) {
        Err(e @ KeyFileError::Corrupted { .. }) => assert!(names(&e, &pk_path), "{e}"),
        other => panic!("{other:?}"),
    }
    // Truncated.
    std::fs::write(&pk_path, &pristine_pk[..pristine_pk.len() - 1]).unwrap();
    match store.bfv(&params) {
        Err(e @ KeyFileError::Length { .. }) => assert!(names(&e, &pk_path), "{e}"),
        other => panic!("{other:?}"),
    }
    // Not a key file.
    std::fs::write(&pk_path, b"hello").unwrap();
    assert!(matches!(
        store.bfv(&params),
        Err(KeyFileError::Format { .. })
    ));
    // Another key pair's public key (intact, decodes): refused as not belonging to the
    // secret key. Negative control: the original file is accepted again.
    let other = TempDir::new("other");
    let other_store = KeyStore::open(&other.0).unwrap();
    other_store.bfv(&params).unwrap();
    std::fs::copy(other_store.bfv_public_path(&params), &pk_path).unwrap();
    match store.bfv(&params) {
        Err(e @ KeyFileError::NotMatching { .. }) => {
            assert!(names(&e, &pk_path) && names(&e, &sk_path), "{e}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&pk_path, &pristine_pk).unwrap();
    store.bfv(&params).unwrap();

    // A bit flipped in the secret key (the file keeps its mode 0600).
    let pristine_sk = std::fs::read(&sk_path).unwrap();
    flip(&sk_path, -1);
    match store.bfv(&params) {
        Err(e @ KeyFileError::Corrupted { .. }) => assert!(names(&e, &sk_path), "{e}"),
        other => panic!("{other:?}"),
    }
    std::fs::write(&sk_path, &pristine_sk).unwrap();
    // Readable by others.
    std::fs::set_permissions(&sk_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    match store.bfv(&params) {
        Err(e @ KeyFileError::Permissions { mode: 0o644, .. }) => assert!(names(&e, &sk_path)),
        other => panic!("{other:?}"),
    }
    std::fs::set_permissions(&sk_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A secret key of other parameters (intact file): refused by the decoder.
    let (cm, ckks) = CkksModel::for_model(&model("digits_square_mlp.onnx")).unwrap();
    store.ckks(&ckks, cm.galois_elements()).unwrap();
    std::fs::copy(store.ckks_secret_path(&ckks), &sk_path).unwrap();
    match store.bfv(&params) {
        Err(e @ KeyFileError::Decode { .. }) => assert!(names(&e, &sk_path), "{e}"),
        other => panic!("{other:?}"),
    }
    // Too large to be a secret key: refused before reading.
    std::fs::write(&sk_path, vec![0u8; 2 << 20]).unwrap();
    assert!(matches!(
        store.bfv(&params),
        Err(KeyFileError::TooLarge { .. })
    ));
    std::fs::write(&sk_path, &pristine_sk).unwrap();
    store.bfv(&params).unwrap();

    // CKKS evaluation keys with a flipped bit.
    let evk = store.ckks_evaluation_path(&ckks, cm.galois_elements());
    flip(&evk, 100);
    match store.ckks(&ckks, cm.galois_elements()) {
        Err(e @ KeyFileError::Corrupted { .. }) => assert!(names(&e, &evk), "{e}"),
        other => panic!("{other:?}"),
    }

    // Through the client: a corrupted secret key fails the connection with the file named.
    // The key is the one for the BFV modulus the server fits to its model and announces.
    let plain = model("digits_mlp.onnx");
    let (addr, _) = start(vec![
        ModelSpec::new("mlp", plain).with_mode(ModeChoice::Hybrid)
    ]);
    let q_bits = Client::connect(&addr).unwrap().models()[0].q_bits;
    let served = BfvParameters::new(
        &SessionConfig {
            q_bits,
            ..SessionConfig::default()
        }
        .bfv_literal(),
    )
    .unwrap();
    store.bfv(&served).unwrap();
    let sk_path = store.bfv_secret_path(&served);
    flip(&sk_path, -1);
    match Client::connect_with(&addr, &options(Some(&dir.0))) {
        Err(ProtocolError::KeyFile(e @ KeyFileError::Corrupted { .. })) => {
            assert!(names(&e, &sk_path), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cache_evicts_least_recently_used_within_its_bounds() {
    let params = BfvParameters::new(&SessionConfig::default().bfv_literal()).unwrap();
    let entry = || CachedKeys::bfv_from_bytes(&params, &generate_bfv(&params).pk).unwrap();
    let (a, b, c) = (entry(), entry(), entry());
    let size = a.1.size_bytes();
    assert!(size > 0);
    // Room for two entries by bytes (not by count).
    let cache = KeyCache::new(100, 2 * size + size / 2);
    assert!(cache.insert(a.0, a.1.clone()));
    assert!(cache.insert(b.0, b.1.clone()));
    assert!(cache.get(&a.0).is_some()); // a is now the most recently used
    assert!(cache.insert(c.0, c.1.clone()));
    assert!(cache.contains(&a.0) && cache.contains(&c.0));
    assert!(!cache.contains(&b.0), "the least recently used entry went");
    assert_eq!(cache.size_bytes(), 2 * size);
    assert!(cache.size_bytes() <= cache.bounds().1);
    assert_eq!(cache.stats().evictions, 1);
    // Re-inserting the same bytes keeps one entry.
    assert!(cache.insert(c.0, c.1.clone()));
    assert_eq!((cache.len(), cache.size_bytes()), (2, 2 * size));

    // Bounded by count.
    let cache = KeyCache::new(2, usize::MAX);
    cache.insert(a.0, a.1.clone());
    cache.insert(b.0, b.1.clone());
    cache.get(&a.0);
    cache.insert(c.0, c.1.clone());
    assert!(cache.contains(&a.0) && !cache.contains(&b.0) && cache.contains(&c.0));

    // An entry larger than the whole bound is not cached.
    let small = KeyCache::new(10, size - 1);
    assert!(!small.insert(a.0, a.1.clone()));
    assert!(small.is_empty() && small.size_bytes() == 0);

    // An id of bytes nobody uploaded is a miss.
    let cache = KeyCache::new(10, usize::MAX);
    cache.insert(a.0, a.1);
    assert!(cache.get(&KeyId::bfv(&generate_bfv(&params).pk)).is_none());
    assert!(cache.get(&KeyId([0; 32])).is_none());
    assert_eq!((cache.stats().hits, cache.stats().misses), (0, 2));
}

#[test]
fn announced_ids_without_uploaded_bytes_are_misses() {
    let plain = model("digits_square_mlp.onnx");
    let (addr, cache) = start(vec![
        ModelSpec::new("sq", plain.clone()).with_mode(ModeChoice::CkksPublicWeights)
    ]);
    let dir = TempDir::new("announce");
    // One client uploads its keys.
    let mut owner = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
    owner.infer("sq", &images(1)[0]).unwrap();
    owner.close().unwrap();
    let real = KeyStore::open(&dir.0).unwrap().held_ids();
    assert_eq!(real.len(), 1);
    assert!(cache.contains(&real[0]));

    let hello = |held: Vec<KeyId>| {
        let mut ch = TcpChannel::connect(&addr, ChannelConfig::default()).unwrap();
        send(
            &mut ch,
            &ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: None,
                held_keys: Some(held),
            },
        )
        .unwrap();
        match recv::<_, ServerMsg>(&mut ch).unwrap() {
            ServerMsg::Hello { cached_keys, .. } => {
                let _ = send(&mut ch, &ClientMsg::Bye);
                cached_keys
            }
            other => panic!("{other:?}"),
        }
    };
    // Ids nobody uploaded the bytes of: misses, nothing set up.
    let params = BfvParameters::new(&SessionConfig::default().bfv_literal()).unwrap();
    let forged = vec![KeyId([0xab; 32]), KeyId::bfv(&generate_bfv(&params).pk)];
    let misses = cache.stats().misses;
    assert!(hello(forged.clone()).is_empty());
    assert_eq!(cache.stats().misses, misses + 2);
    // Negative control: the id of uploaded bytes is found.
    let mut mixed = forged;
    mixed.push(real[0]);
    assert_eq!(hello(mixed), real);
}

#[test]
fn keys_the_server_no_longer_caches_are_uploaded_again() {
    let plain = model("digits_square_mlp.onnx");
    // A cache that holds nothing: every session uploads.
    let (addr, cache) = start_with_cache(
        vec![ModelSpec::new("sq", plain.clone()).with_mode(ModeChoice::CkksPublicWeights)],
        Arc::new(KeyCache::new(0, 0)),
    );
    let dir = TempDir::new("evicted");
    let xs = images(1);
    let mut sent = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connect_with(&addr, &options(Some(&dir.0))).unwrap();
        assert!(client.cached_keys().is_empty());
        infer_and_check(&mut client, "sq", &plain, &xs);
        sent.push(client.stats().bytes_sent);
        client.close().unwrap();
    }
    let key_bytes = file_len(&files_with_extension(&dir.0, "evk")[0]);
    assert!(
        sent.iter().all(|&s| s > key_bytes),
        "{sent:?} vs {key_bytes}"
    );
    assert!(cache.is_empty());
    // The first session announced no id; the second announced one, not cached.
    assert_eq!(cache.stats().misses, 1, "{:?}", cache.stats());
}

#[test]
fn cli_infer_with_a_key_dir_uploads_the_keys_once() {
    use cipherml::data::npy_bytes_f32;
    let plain = model("digits_square_mlp.onnx");
    let (addr, cache) = start(vec![
        ModelSpec::new("sq", plain.clone()).with_mode(ModeChoice::CkksPublicWeights)
    ]);
    let dir = TempDir::new("cli");
    std::fs::create_dir_all(&dir.0).unwrap();
    let xs = images(2);
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    let batch = ndarray::stack(Axis(0), &views).unwrap().mapv(|v| v as f32);
    let input = dir.0.join("x.npy");
    std::fs::write(&input, npy_bytes_f32(&batch)).unwrap();
    let keys = dir.0.join("keys");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cipherml"))
            .args(["infer", "--server", &addr, "--model", "sq", "--input"])
            .arg(&input)
            .arg("--key-dir")
            .arg(&keys)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "{stderr}");
        for (i, x) in xs.iter().enumerate() {
            let class = argmax(&plain.predict(x).unwrap());
            assert!(stdout.contains(&format!("{i}: class {class}")), "{stdout}");
        }
        // "... MB exchanged in all"
        let mb: f64 = stderr
            .split(" MB exchanged")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{stderr}"));
        (stderr, mb)
    };
    let (first, first_mb) = run();
    assert!(first.contains("0 key set(s) still cached"), "{first}");
    let (second, second_mb) = run();
    assert!(second.contains("1 key set(s) still cached"), "{second}");
    let key_mb = file_len(&files_with_extension(&keys, "evk")[0]) as f64 / 1e6;
    assert!(
        second_mb + key_mb / 2.0 < first_mb,
        "{second_mb} MB the second time, {first_mb} MB the first, keys {key_mb} MB"
    );
    for sk in files_with_extension(&keys, "sk") {
        let mode = std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sk.display());
    }
    assert_eq!(cache.stats().insertions, 1);
}
