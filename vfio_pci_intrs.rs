// SPDX-License-Identifier: GPL-2.0

//! Interrupts: INTx, MSI and MSI-X through eventfds, ERR and REQ notifiers, as
//! `vfio_pci_intrs.c`.
