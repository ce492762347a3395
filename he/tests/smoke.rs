mod common;
use common::*;

#[test]
fn smoke() {
    for (lit, insecure) in [(small(64, vec![50, 50, 50], vec![50], 17), true), (cipherml_he::bfv::BfvParametersLiteral::n8192(), false)] {
        let mut b = setup(&lit, insecure, 1);
        let x = b.random_slots();
        let y = b.random_slots();
        let t = b.params.plaintext_modulus();
        let cx = b.encrypt(&x);
        let cy = b.encrypt(&y);
        assert_eq!(b.decrypt(&cx), x);
        println!("budget fresh {}", b.decryptor.noise_budget(&cx).unwrap());
        let cz = b.ev.mul_relin(&cx, &cy, &b.rlk).unwrap();
        println!("budget mul {}", b.decryptor.noise_budget(&cz).unwrap());
        let want: Vec<u64> = x.iter().zip(&y).map(|(a, c)| ((*a as u128 * *c as u128) % t as u128) as u64).collect();
        assert_eq!(b.decrypt(&cz), want);
        let g = b.ev.galois_element_rows(1).unwrap();
        let gk = b.galois(&[g]);
        let r = b.ev.rotate_rows(&cx, 1, &gk).unwrap();
        let d = b.decrypt(&r);
        let h = x.len() / 2;
        assert_eq!(d[0], x[1]);
        assert_eq!(d[h - 1], x[0]);
        assert_eq!(d[h], x[h + 1]);
        let ms = b.ev.mod_switch_to_next(&cz).unwrap();
        assert_eq!(b.decrypt(&ms), want);
    }
}
