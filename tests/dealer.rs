//! The dealer as a real third process: `cipherml dealer` serves Beaver triples over TCP to
//! two parties (threads of this test), whose products of shared vectors and matrices
//! reconstruct to the plaintext products.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cipherml_mpc::net::{tcp_loopback_pair, ChannelConfig, TcpChannel};
use cipherml_mpc::party::Party;
use cipherml_mpc::prg::os_rng;
use cipherml_mpc::protocols::arith;
use cipherml_mpc::ring::Ring;
use cipherml_mpc::share::{split, PartyId};
use cipherml_mpc::triples::dealer::{DealerClient, SessionToken};
use cipherml_mpc::triples::TripleSource;

/// A child process, killed if the test ends before it exits.
struct Dealer(Child);

impl Drop for Dealer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `cipherml dealer` for one session, its stdout after the first line, and that line
/// (`listening on ADDR`).
fn spawn_dealer() -> (Dealer, BufReader<std::process::ChildStdout>, String) {
    let mut dealer = Dealer(
        Command::new(env!("CARGO_BIN_EXE_cipherml"))
            .args(["dealer", "--listen", "127.0.0.1:0", "--sessions", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(dealer.0.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    (dealer, out, first)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn two_parties_multiply_with_triples_from_a_dealer_process() {
    let (mut dealer, mut out, first) = spawn_dealer();
    let addr = first
        .strip_prefix("listening on ")
        .expect("first line: listening on ADDR")
        .trim()
        .to_string();

    let ring = Ring::new(64).unwrap();
    let mut rng = os_rng();
    let (x, y) = (
        ring.random_vec(&mut rng, 100),
        ring.random_vec(&mut rng, 100),
    );
    let (a, b) = (ring.random_vec(&mut rng, 6), ring.random_vec(&mut rng, 15));
    let (sx, sy) = (split(ring, &x, &mut rng), split(ring, &y, &mut rng));
    let (sa, sb) = (split(ring, &a, &mut rng), split(ring, &b, &mut rng));
    let config = ChannelConfig {
        timeout: Duration::from_secs(60),
        ..ChannelConfig::default()
    };
    let (c0, c1) = tcp_loopback_pair(config).unwrap();
    let run = {
        let addr = addr.clone();
        move |id: PartyId, mut ch: TcpChannel, [x, y, a, b]: [Vec<u64>; 4]| {
            // Party 0 draws the session token and sends it to party 1.
            let token = SessionToken::agree(id, &mut ch, &mut os_rng()).unwrap();
            let mut dealer = DealerClient::connect(addr.as_str(), id, &token, config).unwrap();
            let mut p = Party::setup(id, ch, os_rng()).unwrap();
            let t = dealer.arith(&mut p, ring, 100).unwrap();
            let z = arith::mul(&mut p, &x, &y, &t).unwrap();
            let mt = dealer.matrix(&mut p, ring, 2, 3, 5).unwrap();
            let w = arith::matmul(&mut p, &a, &b, &mt).unwrap();
            // Dropping the client hangs up on the dealer.
            (z, w, token)
        }
    };
    let shares1 = [sx.1, sy.1, sa.1, sb.1];
    let run1 = run.clone();
    let p1 = std::thread::spawn(move || run1(PartyId::P1, c1, shares1));
    let (z0, w0, token) = run(PartyId::P0, c0, [sx.0, sy.0, sa.0, sb.0]);
    let (z1, w1, token1) = p1.join().unwrap();
    assert_eq!(token, token1);
    assert_eq!(ring.add_vec(&z0, &z1), ring.mul_vec(&x, &y));
    assert_eq!(ring.add_vec(&w0, &w1), ring.matmul(&a, &b, 2, 3, 5));

    // Both parties hung up: the dealer (asked for one session) reports it and exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = dealer.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the dealer did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "dealer exited with {status}: {rest}");
    let session = rest
        .lines()
        .find(|l| l.starts_with("session 1 "))
        .unwrap_or_else(|| panic!("no session line in {rest:?}"));
    assert!(session.contains("2 request(s) served"), "{session}");
    assert!(
        rest.contains("done: 1 session(s) served, 0 failed"),
        "{rest}"
    );
    assert!(!rest.contains(&hex(&token.to_bytes())), "the token leaked");
}

/// A model runs through the engine with its Beaver triples from the dealer process (the
/// session's configuration names it): the logits equal the plaintext model's, and the
/// dealer reports that it served the session's requests.
#[test]
fn a_model_runs_with_the_dealer_as_a_third_process() {
    use cipherml::nn::{Layer, PreparedModel, Sequential};
    use cipherml::tensor::{run_local_with, Role, SessionConfig, Triples};
    use ndarray::{Array1, Array2, ArrayD};

    let (mut dealer, mut out, first) = spawn_dealer();
    let addr: std::net::SocketAddr = first
        .strip_prefix("listening on ")
        .expect("first line: listening on ADDR")
        .trim()
        .parse()
        .unwrap();
    // Small dense layers (the cost model runs them on shares: matrix triples) and a
    // square (elementwise triples).
    let w1 = Array2::from_shape_fn((4, 6), |(i, j)| ((i * 6 + j) as f64 * 0.37).sin());
    let w2 = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64 * 0.91).cos());
    let model = Sequential::new(vec![6])
        .add(Layer::Dense {
            weight: w1,
            bias: Array1::from(vec![0.1, -0.2, 0.3, 0.0]),
        })
        .add(Layer::Square)
        .add(Layer::Dense {
            weight: w2,
            bias: Array1::from(vec![0.5, 0.0, -0.5]),
        });
    let x = ArrayD::from_shape_vec(vec![6], vec![0.5, -1.0, 0.25, 0.75, -0.5, 1.0]).unwrap();
    let want = model.predict(&x).unwrap();
    let config = SessionConfig {
        triples: Triples::Dealer { addr },
        ..SessionConfig::default()
    };
    let arch = Sequential::from_architecture(&model.architecture()).unwrap();
    let server_model = PreparedModel::new(&model, &config, true).unwrap();
    let client_model = PreparedModel::new(&arch, &config, false).unwrap();
    let x2 = x.clone();
    let (got, _) = run_local_with(config, move |s| {
        if s.role() == Role::Server {
            server_model.run_server(s)?;
            return Ok(None);
        }
        let y = client_model.run_client(s, &x2)?;
        let plan = s.explain();
        Ok(Some((y, plan)))
    })
    .unwrap();
    let (got, plan) = got.unwrap();
    for (g, w) in got.iter().zip(want.iter()) {
        assert!((g - w).abs() < 0.02, "private {g} vs plaintext {w}");
    }
    assert!(plan.contains("* secret shares"), "{plan}");
    // The sessions have ended (dropped): the dealer served them and exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dealer.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the dealer did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{rest}");
    // Two matrix triples and one batch of elementwise triples.
    assert!(rest.contains("3 request(s) served"), "{rest}");
}
