// SPDX-License-Identifier: GPL-2.0

#include <linux/pci.h>
#include <linux/vgaarb.h>
#include <linux/aperture.h>

__rust_helper bool rust_helper_pci_is_root_bus(struct pci_bus *pbus)
{
	return pci_is_root_bus(pbus);
}

__rust_helper struct pci_dev *rust_helper_pci_upstream_bridge(struct pci_dev *dev)
{
	return pci_upstream_bridge(dev);
}

__rust_helper struct pci_dev *rust_helper_pci_physfn(struct pci_dev *dev)
{
	return pci_physfn(dev);
}

#ifndef CONFIG_PCI_IOV
__rust_helper int rust_helper_pci_num_vf(struct pci_dev *dev)
{
	return pci_num_vf(dev);
}
#endif

__rust_helper bool rust_helper_pci_intx_mask_supported(struct pci_dev *pdev)
{
	return pci_intx_mask_supported(pdev);
}

__rust_helper int rust_helper_vga_get_interruptible(struct pci_dev *pdev,
						    unsigned int rsrc)
{
	return vga_get_interruptible(pdev, rsrc);
}

__rust_helper int rust_helper_pci_domain_nr(struct pci_bus *bus)
{
	return pci_domain_nr(bus);
}

__rust_helper int rust_helper_aperture_remove_conflicting_pci_devices(struct pci_dev *pdev,
								      const char *name)
{
	return aperture_remove_conflicting_pci_devices(pdev, name);
}

#ifndef CONFIG_PCI_IOV
__rust_helper int rust_helper_pci_enable_sriov(struct pci_dev *dev, int nr_virtfn)
{
	return pci_enable_sriov(dev, nr_virtfn);
}

__rust_helper void rust_helper_pci_disable_sriov(struct pci_dev *dev)
{
	pci_disable_sriov(dev);
}
#endif

#ifndef CONFIG_VGA_ARB
__rust_helper void rust_helper_vga_set_legacy_decoding(struct pci_dev *pdev, unsigned int decodes)
{
	vga_set_legacy_decoding(pdev, decodes);
}

__rust_helper int rust_helper_vga_client_register(struct pci_dev *pdev,
						  unsigned int (*set_decode)(struct pci_dev *pdev,
									     bool state))
{
	return vga_client_register(pdev, set_decode);
}
#endif
