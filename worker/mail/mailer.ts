/** An e-mail as the gateway sends it: plain text, one recipient. */
export interface OutgoingMail {
  to: string;
  subject: string;
  text: string;
}

/** Sends one e-mail or throws. Behind an interface so tests can see and fail deliveries. */
export interface Mailer {
  send(mail: OutgoingMail): Promise<void>;
}

/** Delivery through the Workers `send_email` binding. */
export function sendEmailMailer(binding: SendEmail, from: string): Mailer {
  return {
    async send(mail) {
      await binding.send({ from, to: mail.to, subject: mail.subject, text: mail.text });
    },
  };
}

/** A mailer that keeps what it was given and can be told to fail; the test twin. */
export function memoryMailer(): Mailer & { sent: OutgoingMail[]; failNext: number } {
  const state = {
    sent: [] as OutgoingMail[],
    failNext: 0,
    async send(mail: OutgoingMail) {
      if (state.failNext > 0) {
        state.failNext--;
        throw new Error("mail delivery failed");
      }
      state.sent.push(mail);
    },
  };
  return state;
}
